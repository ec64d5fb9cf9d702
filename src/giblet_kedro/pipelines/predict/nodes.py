"""In-silico nodes: a movie -> features -> the trained model's predicted response, the
regions' time courses, modality ablations, a contrast, and held-out runs scored.

Wiring over :mod:`giblet_kedro.evaluation.insilico` and the stimulus extractors. A node
that finds bad input raises before returning, so nothing of the stage is written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from giblet_kedro.errors import InputDataError
from giblet_kedro.evaluation import insilico, metrics, nulls
from giblet_kedro.evaluation.figures import prediction_figure
from giblet_kedro.evaluation.lesion import region_voxels
from giblet_kedro.evaluation.model import TrainedModel
from giblet_kedro.fmri.volume import unmask
from giblet_kedro.paths import data_dir
from giblet_kedro.spec.fingerprint import DigestCache
from giblet_kedro.spec.schema import EvaluateSpec, FmriSpec, PredictSpec, StimulusSpec, run_onsets
from giblet_kedro.stimulus.aligned import TrAligned, TrGrid
from giblet_kedro.stimulus.audio import extract_audio
from giblet_kedro.stimulus.media import media_duration_s
from giblet_kedro.stimulus.model_input import extraction_device
from giblet_kedro.stimulus.text import extract_text
from giblet_kedro.stimulus.video import extract_frames
from giblet_kedro.training.job import TrainJob
from giblet_kedro.training.selection import weights_kept

log = logging.getLogger(__name__)
LABEL = "predict.stimulus"


def _same_file(a: str | None, b: str | None) -> bool:
    """Do two files hold the same bytes (by their content digests, cached by stat)?"""
    if not a or not b:
        return False
    if Path(a).resolve() == Path(b).resolve():
        return True
    digests = DigestCache(data_dir() / ".giblet" / "digests.json")
    return digests.digest(Path(a), LABEL) == digests.digest(Path(b), "the training movie")


def _extract(name: str, movie: Path, annotations: Path | None, grid: TrGrid, stimulus: StimulusSpec,
             seed: int, codebooks: np.ndarray | None) -> TrAligned | None:
    """One modality of the new movie on its TR grid (before the HRF), or None when the
    spec has no such modality or the movie cannot give it (text without annotations).
    ``codebooks``: the training audio's EnCodec codebooks (random weights), so that the new
    movie's codes mean what the model learned them to mean."""
    device = extraction_device(stimulus.device)
    if name == "video" and stimulus.video is not None:
        return extract_frames(movie, grid, tuple(stimulus.video.size), stimulus.video.frames_per_tr, label=LABEL)
    if name == "audio" and stimulus.audio is not None:
        audio = stimulus.audio
        return extract_audio(movie, grid, audio.model, audio.bandwidth, audio.weights, seed=seed,
                             chunk_s=audio.chunk_s, device=device, codebooks=codebooks)
    if name == "text" and stimulus.text is not None and annotations is not None:
        text = stimulus.text
        return extract_text(annotations, grid, text.start, text.end, list(text.columns), text.model, text.weights,
                            seed=seed, run_onsets_s=None, batch_size=text.batch_size, device=device)
    return None


def extract_new_stimulus(predict: PredictSpec, stimulus: StimulusSpec | None, fmri: FmriSpec,
                         experiment: dict[str, Any], training_audio: TrAligned
                         ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The movie ``predict.stimulus`` (and ``predict.annotations``) through the training
    spec's extractors (each TR's features, as the model reads them: no HRF step), on the
    movie's own TR grid from ``predict.onset_s``.

    Returns arrays (``<modality>`` (n_trs, *sample), ``<modality>_valid`` (n_trs,),
    ``window_starts_s`` (n_trs,)) and their provenance (grid, notes, whether the movie is
    the training movie). Ablated modalities are not extracted. The audio is coded with the
    training audio's codebooks (``training_audio``, the stimulus stage's cache).
    """
    stimulus = stimulus or StimulusSpec()
    if predict.stimulus is None:
        raise InputDataError(f"experiment {experiment['name']!r}: nothing to predict: set predict.stimulus to a movie "
                             "(e.g. --params predict.stimulus=/path/to/movie.mp4); the spec has no stimulus.video or "
                             "stimulus.audio to default to")
    movie = Path(predict.stimulus)
    grid = insilico.movie_grid(media_duration_s(movie, LABEL), fmri.tr, predict.onset_s, LABEL)
    annotations = Path(predict.annotations) if predict.annotations else None
    arrays: dict[str, np.ndarray] = {"window_starts_s": grid.window_starts()}
    meta: dict[str, Any] = {"movie": str(movie), "annotations": None if annotations is None else str(annotations),
                            "grid": grid.describe(), "modalities": {}, "ablated": list(predict.ablate)}
    # What the movie cannot give, known before any extraction (text without annotations, the
    # lab's features): refused now rather than after minutes of decoding; a soundtrack found
    # missing while decoding is refused below.
    _refuse_missing(stimulus, ["video", "audio", *(["text"] if annotations is not None else [])], predict.ablate)
    for name in ("video", "audio", "text"):
        if name in predict.ablate:
            continue
        try:
            aligned = _extract(name, movie, annotations, grid, stimulus, int(experiment["seed"]),
                               training_audio.extras.get("codebooks"))
        except InputDataError as error:
            raise InputDataError(f"{error}; if the model should predict without its {name}, add {name} to "
                                 "predict.ablate (it is then replaced by its training mean)") from None
        if aligned is None:
            continue
        arrays[name], arrays[f"{name}_valid"] = np.asarray(aligned.values), np.asarray(aligned.valid, dtype=bool)
        meta["modalities"][name] = {"shape": list(aligned.values.shape), "valid_trs": int(aligned.valid.sum()),
                                    "hrf": "none: the model reads each TR's features and learns the lags",
                                    "notes": aligned.meta.get("notes", [])}
    _refuse_missing(stimulus, list(meta["modalities"]), predict.ablate)
    training = (stimulus.video or stimulus.audio)
    meta["training_movie"] = training is not None and _same_file(str(movie), training.path)
    log.info("predict: %s, %d TRs of %g s from %g s, modalities %s%s", movie.name, grid.n_trs, fmri.tr,
             predict.onset_s, sorted(meta["modalities"]), " (the training movie)" if meta["training_movie"] else "")
    return arrays, meta


def _refuse_missing(stimulus: StimulusSpec, extracted: list[str], ablate: list[str]) -> None:
    """Before anything is written: every modality the spec trains on must come from the
    new stimulus or be ablated (the model's own check repeats this against its shapes)."""
    trained_on = [m for m in ("video", "audio", "text") if getattr(stimulus, m) is not None]
    trained_on += ["features"] if stimulus.features else []
    missing = insilico.missing_modalities(trained_on, extracted, ablate)
    if missing:
        raise InputDataError(insilico.missing_message(missing))


def _check_voxels(trained: TrainedModel, mask: np.ndarray) -> None:
    n_mask = int(mask.sum())
    if trained.job.shapes.n_voxels != n_mask:
        raise InputDataError(f"the trained model has {trained.job.shapes.n_voxels} voxels but the experiment's mask "
                             f"has {n_mask}: it was trained on a different voxel set; retrain it on this "
                             "experiment's fMRI (kedro run --pipelines=train)")


def predict_response(train_job: dict[str, Any], model_checkpoint: dict[str, torch.Tensor],
                     seed_checkpoints: dict[str, dict[str, torch.Tensor]], training_history: dict,
                     fmri_norm_stats: dict[str, np.ndarray], predict_stimulus: dict[str, np.ndarray],
                     predict: PredictSpec) -> tuple[nib.Nifti1Image, dict[str, np.ndarray], nib.Nifti1Image]:
    """The predicted response to the new movie, each modality's ablation effect, and the
    contrast of two segments.

    Returns the prediction as a 4D NIfTI (x, y, z, n_trs) in the training tensor's
    units (z-scores), the arrays (``zscored`` and ``model_units`` (n_trs, V),
    ``window_starts_s``, ``ablation_<m>`` (V,), ``contrast_difference`` and
    ``contrast_t`` (V,); ``weights_epoch`` and ``weights_reason``: the training epoch whose
    weights predicted, and why they were kept) and the ablation maps as a 4D NIfTI, one volume per modality
    (in ``ablation_modalities`` order). With ``train.seeds`` the prediction and the
    ablations are the mean over the seeds' models (``seeds`` names them).
    """
    job = TrainJob.from_dict(train_job)
    trained = TrainedModel.load(job, model_checkpoint)
    mask = np.asarray(fmri_norm_stats["mask"], dtype=bool)
    affine = np.asarray(fmri_norm_stats["affine"], dtype=np.float64)
    _check_voxels(trained, mask)
    members = [trained, *(TrainedModel.load(job, weights) for weights in seed_checkpoints.values())]
    predictor = insilico.EnsemblePredictor([insilico.MoviePredictor(member, predict_stimulus, predict.ablate)
                                            for member in members])
    starts = np.asarray(predict_stimulus["window_starts_s"], dtype=np.float64)
    full = predictor()
    zscored = trained.stats["fmri"].restore(full)
    kept = weights_kept(training_history)
    arrays: dict[str, np.ndarray] = {"model_units": full, "zscored": zscored, "window_starts_s": starts,
                                     "weights_epoch": np.array(kept["epoch"]),
                                     "weights_reason": np.array(kept["reason"], dtype=np.str_),
                                     "seeds": np.array(job.seeds)}
    tested = predictor.tested
    for name in tested:
        arrays[f"ablation_{name}"] = insilico.ablation_effect(full, predictor(ablate=(name,))).astype(np.float32)
    arrays["ablation_modalities"] = np.array(tested, dtype=np.str_)
    if predict.contrast is not None:
        tr = trained.job.tr
        rows = {k: insilico.segment_rows(starts, tr, segment, f"predict.contrast.{k}")
                for k, segment in predict.contrast.items()}
        arrays |= {f"contrast_{k}": v for k, v in insilico.contrast_map(zscored, rows["a"], rows["b"]).items()}
    image = unmask(zscored, mask, affine)
    image.header.set_xyzt_units(xyz="mm", t="sec")
    image.header["pixdim"][4] = trained.job.tr
    maps = unmask(np.stack([arrays[f"ablation_{m}"] for m in tested]), mask, affine)
    maps.header["descrip"] = ("ablation effect: " + ",".join(tested)).encode()[:79]
    log.info("predict: %d TRs x %d voxels; ablation effect (median over voxels) %s", *zscored.shape,
             {m: round(float(np.median(arrays[f"ablation_{m}"])), 3) for m in tested})
    return image, arrays, maps


def region_timecourses(predicted_voxels: dict[str, np.ndarray], fmri_norm_stats: dict[str, np.ndarray],
                       region_images: Mapping[str, nib.Nifti1Image], predict: PredictSpec,
                       experiment: dict[str, Any]) -> tuple[pd.DataFrame, Any]:
    """Each region's mean predicted response per TR (z units), and the figure.

    Returns the table (``tr``, ``time_s``: movie seconds at the TR window's start, one
    column per region) and a matplotlib figure of the time courses."""
    mask = np.asarray(fmri_norm_stats["mask"], dtype=bool)
    zscored = np.asarray(predicted_voxels["zscored"])
    table = pd.DataFrame({"tr": np.arange(zscored.shape[0]), "time_s": predicted_voxels["window_starts_s"]})
    for name, region in predict.regions.items():
        voxels = region_voxels(region_images[name], region.labels, mask, fmri_norm_stats["affine"],
                               f"predict.regions.{name}")
        table[name] = zscored[:, voxels].mean(axis=1)
    return table, prediction_figure(table, predicted_voxels, mask, experiment["name"])


def score_heldout_runs(predicted_voxels: dict[str, np.ndarray], predict_stimulus_meta: dict[str, Any],
                       heldout: dict[str, np.ndarray], split: pd.DataFrame, fmri: FmriSpec,
                       stimulus: StimulusSpec | None, evaluate: EvaluateSpec) -> dict[str, Any]:
    """Each ``fmri.heldout`` run against the prediction, TR for TR from its first volume
    (at ``predict.onset_s`` of the movie). For the training movie only the split's test
    TRs are scored; each voxel's p from ``evaluate.null``, Benjamini-Hochberg at
    ``evaluate.fdr``."""
    starts = np.asarray(predicted_voxels["window_starts_s"], dtype=np.float64)
    training_movie = bool(predict_stimulus_meta["training_movie"])
    test_starts = None
    if training_movie:
        grid = TrGrid.from_split(split, fmri.tr, run_onsets(fmri, stimulus))
        test_starts = grid.window_starts()[split["split"].astype(str).to_numpy() == "test"]
    rows = insilico.scored_rows(starts, test_starts, fmri.tr)
    report: dict[str, Any] = {
        "movie": predict_stimulus_meta["movie"], "training_movie": training_movie, "predicted_trs": len(starts),
        "scored": ("the split's test TRs only (the model saw the training movie's other TRs)" if training_movie
                   else "every TR (a movie the model never saw)"),
        "units": "Pearson r per voxel over the scored TRs, mean over voxels", "rows": rows.tolist(),
        "evaluate": {"fdr": evaluate.fdr, "min_shift_trs": evaluate.min_shift_trs}, "runs": {}}
    rng = np.random.default_rng(0)
    prediction = np.asarray(predicted_voxels["model_units"])
    for key, measured in heldout.items():
        sid = key.removeprefix("subject_")
        usable = rows[rows < measured.shape[0]]
        if len(usable) < 3:
            report["runs"][sid] = {"skipped": f"{len(usable)} TRs to score (the run has {measured.shape[0]})"}
            continue
        summary, _, _ = insilico.score_run(prediction[usable], np.asarray(measured)[usable], evaluate.null,
                                           evaluate.null_draws, evaluate.min_shift_trs, evaluate.fdr, rng)
        report["runs"][sid] = summary
        log.info("predict: held-out run of subject %s: mean r %.3f over %d TRs, %.0f%% of voxels significant", sid,
                 summary["mean_r"], summary["trs"], 100 * summary["share_significant"])
    return report


def modality_timing_test(train_job: dict[str, Any], model_checkpoint: dict[str, torch.Tensor],
                         predict_stimulus: dict[str, np.ndarray], heldout_prediction_scores: dict[str, Any],
                         heldout: dict[str, np.ndarray], fmri_norm_stats: dict[str, np.ndarray],
                         predict: PredictSpec) -> tuple[dict[str, Any], nib.Nifti1Image]:
    """Which voxels' held-out responses follow each modality's timing: the permutation
    test of :func:`giblet_kedro.evaluation.insilico.modality_shift_test` on the rows and
    runs the held-out scores used, ``predict.permutations`` circular shifts of at least
    the evaluation's ``min_shift_trs``, Benjamini-Hochberg at its ``fdr``.

    Returns the summary (JSON) and the p maps as a 4D NIfTI, one volume per modality
    (NaN where nothing was tested: no held-out run watched the movie, or no shifts).
    """
    job = TrainJob.from_dict(train_job)
    mask = np.asarray(fmri_norm_stats["mask"], dtype=bool)
    affine = np.asarray(fmri_norm_stats["affine"], dtype=np.float64)
    trained = TrainedModel.load(job, model_checkpoint)
    _check_voxels(trained, mask)
    predictor = insilico.MoviePredictor(trained, predict_stimulus, predict.ablate)
    scores = heldout_prediction_scores
    rows = np.asarray(scores["rows"], dtype=np.int64)
    subjects = [sid for sid, run in scores["runs"].items() if "skipped" not in run]
    evaluate = scores["evaluate"]
    report: dict[str, Any] = {"modalities": {}, "permutations": predict.permutations,
                              "statistic": "subjects' mean Pearson r of prediction and held-out run on the scored rows",
                              "null": "the modality's input circularly shifted (content kept, timing broken); "
                                      "p = (1 + #shifts with r >= aligned r) / (1 + shifts)",
                              "fdr": f"Benjamini-Hochberg at {evaluate['fdr']} across voxels, per modality"}
    p_maps = np.full((len(predictor.tested), int(mask.sum())), np.nan, dtype=np.float32)
    if not subjects or predict.permutations == 0:
        report["skipped"] = ("predict.permutations is 0" if subjects else
                             "no fmri.heldout run watched this movie (or none had 3 TRs to score)")
        log.info("predict: modality timing test skipped: %s", report["skipped"])
    else:
        rows = rows[rows < min(heldout[f"subject_{sid}"].shape[0] for sid in subjects)]
        measured = np.stack([np.asarray(heldout[f"subject_{sid}"])[rows] for sid in subjects])
        rng = np.random.default_rng(job.seed)
        shifts = nulls.null_shifts(predictor.n_trs, predict.permutations, int(evaluate["min_shift_trs"]), rng)
        for index, name in enumerate(predictor.tested):
            observed, drop, p = insilico.modality_shift_test(
                lambda trs, name=name: predictor.shifted(name, trs), measured, rows, shifts)
            significant = metrics.fdr_significant(p, float(evaluate["fdr"]))
            p_maps[index] = p
            report["modalities"][name] = {"share_significant": float(significant.mean()),
                                          "median_drop_in_r": float(np.median(drop)),
                                          "mean_aligned_r": float(observed.mean()), "min_p": float(p.min())}
        report |= {"subjects": subjects, "rows": int(rows.size), "shifts": int(len(shifts))}
        log.info("predict: voxels following each modality's timing (FDR): %s",
                 {m: round(v["share_significant"], 3) for m, v in report["modalities"].items()})
    image = unmask(p_maps, mask, affine, fill=np.nan)
    image.header["descrip"] = ("permutation p: " + ",".join(predictor.tested)).encode()[:79]
    return report, image

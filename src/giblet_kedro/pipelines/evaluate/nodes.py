"""Evaluation nodes: predict held-out fMRI from the stimulus, score it against the noise
ceiling and the ridge reference, and measure reconstruction per modality.

"Held-out" rows are the split's ``test`` rows: a block at the end of every run
(``split.by: blocks``) or whole runs (``split.by: run``); never used for training,
normalization statistics or model selection.
"""

from __future__ import annotations

import logging
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from giblet_kedro.evaluation import metrics
from giblet_kedro.evaluation.model import TrainedModel
from giblet_kedro.evaluation.ridge import feature_band, fit_banded_ridge
from giblet_kedro.fmri.normalize import combine_subjects
from giblet_kedro.pipelines.fmri.nodes import subject_sources
from giblet_kedro.pipelines.train.nodes import build_job, present_modalities, split_rows
from giblet_kedro.spec.schema import EvaluateSpec, FmriSpec, LossSpec, ModelSpec, TrainSpec
from giblet_kedro.stimulus.aligned import TrAligned

log = logging.getLogger(__name__)


def intersubject_on_rows(runs: dict[str, nib.Nifti1Image], confounds: dict[str, pd.DataFrame],
                         stats: dict[str, np.ndarray], split: pd.DataFrame, fmri: FmriSpec) -> dict[str, np.ndarray]:
    """Inter-subject agreement on the val rows (which voxels are reliable) and the test
    rows (the noise ceiling), from each subject's cleaned, z-scored data.

    The ``cross_subject`` tensor holds only the subjects' mean, so the runs are read
    again, one subject at a time; what is kept is :class:`InterSubject`'s running sums,
    2 x (n_rows, n_voxels) per row set whatever the number of subjects.
    """
    subjects, columns = subject_sources(runs, confounds, stats, fmri)
    picked = {which: split.loc[split["split"] == which, "tr"].to_numpy(dtype=np.int64) for which in ("val", "test")}

    states = {which: metrics.InterSubject.empty(len(rows), len(columns)) for which, rows in picked.items()}
    for subject in subjects:
        normalized = combine_subjects([subject], columns, "per_subject", fmri.chunk_trs)[0]
        for which, rows in picked.items():
            states[which].add(normalized[rows])
    return {key: value for which, state in states.items() for key, value in state.to_arrays(which).items()}


def load_trained(fmri_train: np.ndarray, fmri_split: pd.DataFrame, loss_stats: dict, video: TrAligned,
                 audio: TrAligned, text: TrAligned, weights: dict[str, torch.Tensor], model: ModelSpec,
                 loss: LossSpec, train: TrainSpec, experiment: dict[str, Any], run_dir: str) -> TrainedModel:
    job = build_job(fmri_train, fmri_split, loss_stats, video, audio, text, model, loss, train,
                    int(experiment["seed"]), run_dir)
    return TrainedModel.load(weights, job)


def measured_fmri(fmri_train: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n_subjects, n_rows, V): the tensor's rows, with a subject axis of 1 in ``cross_subject``."""
    return np.asarray(fmri_train[rows])[None] if fmri_train.ndim == 2 else np.asarray(fmri_train[:, rows])


def predict_test(fmri_train: np.ndarray, fmri_split: pd.DataFrame, loss_stats: dict, video: TrAligned,
                 audio: TrAligned, text: TrAligned, model_checkpoint: dict, model: ModelSpec, loss: LossSpec,
                 train: TrainSpec, experiment: dict[str, Any], run_dir: str) -> tuple[dict[str, np.ndarray], dict]:
    """The autoencoder on the test rows' stimulus.

    Returns the predictions (``rows``, ``fmri`` (n_test, V) in model units, each
    modality's reconstruction and target, ``<m>_valid``; audio codes as the predicted
    codes and the per-sample normalized loss) and the reconstruction metrics.
    """
    trained = load_trained(fmri_train, fmri_split, loss_stats, video, audio, text, model_checkpoint, model, loss,
                           train, experiment, run_dir)
    rows = split_rows(fmri_split, "test")
    if rows.size == 0:
        raise ValueError("the split has no test TRs to evaluate on: set fmri.split.test (a fraction or runs)")
    outputs = trained.predict(rows)
    targets = trained.batch(rows)
    losses = trained.normalized_losses(outputs, targets)
    saved: dict[str, np.ndarray] = {"rows": rows, "fmri": outputs["fmri"]}
    for name in trained.modalities:
        saved[f"{name}_valid"] = targets[f"{name}_valid"]
        if name == "audio" and trained.job.shapes.audio_is_codes:
            saved["audio"] = outputs["audio"].argmax(axis=2).astype(np.int16)
            saved["audio_target"] = targets["audio"].astype(np.int16)
        else:
            saved[name], saved[f"{name}_target"] = outputs[name], targets[name]
    train_codes = np.asarray(audio.values)[split_rows(fmri_split, "train")] if "audio" in trained.modalities else None
    return saved, reconstruction_metrics(saved, trained, train_codes, losses)


def reconstruction_metrics(saved: dict[str, np.ndarray], trained: TrainedModel, train_codes: np.ndarray | None,
                           losses: dict[str, float]) -> dict[str, Any]:
    """Per modality, on the valid test rows: video frame r and PSNR (in the cache's units,
    data range of the true frames), audio code accuracy against always guessing the
    most frequent training code, text cosine and top-1/top-5 retrieval among the test TRs.
    Every modality also gets its normalized loss (the training loss's units: 1 = the
    training mean, or the code marginal)."""
    stats = trained.stats
    report: dict[str, Any] = {}
    for name in trained.modalities:
        valid = saved[f"{name}_valid"].astype(bool)
        if not valid.any():
            report[name] = {"valid_trs": 0}
            continue
        entry: dict[str, Any] = {"valid_trs": int(valid.sum()), "normalized_loss": losses[name]}
        if name == "audio" and trained.job.shapes.audio_is_codes:
            codes, target = saved["audio"][valid], saved["audio_target"][valid]
            entry["code_accuracy"] = float((codes == target).mean())
            entry["majority_code_accuracy"] = metrics.majority_code_accuracy(train_codes, target)
        else:
            pred, true = saved[name][valid], saved[f"{name}_target"][valid]
            entry["sample_r_mean"] = float(metrics.frame_correlation(pred, true).mean())
            if name == "video":
                raw_pred, raw_true = pred * stats[name].std + stats[name].mean, true * stats[name].std + stats[name].mean
                data_range = float(raw_true.max() - raw_true.min()) or 1.0
                entry["psnr_db_mean"] = float(metrics.psnr(raw_pred, raw_true, data_range).mean())
                entry["psnr_data_range"] = data_range
            if name == "text":
                raw_pred, raw_true = pred * stats[name].std + stats[name].mean, true * stats[name].std + stats[name].mean
                entry["cosine_mean"] = float(metrics.cosine_rows(raw_pred, raw_true).mean())
                index = np.arange(len(raw_true))
                for k in (1, 5):
                    entry[f"top{k}_retrieval"] = metrics.retrieval_top_k(raw_pred, raw_true, index, k)
                    entry[f"top{k}_chance"] = min(k / len(raw_true), 1.0)
        report[name] = entry
    return report


def fit_ridge_reference(fmri_train: np.ndarray, fmri_split: pd.DataFrame, video: TrAligned, audio: TrAligned,
                        text: TrAligned, evaluate: EvaluateSpec, experiment: dict[str, Any]
                        ) -> tuple[dict[str, np.ndarray], dict]:
    """Banded ridge with FIR delays on the autoencoder's features (see
    :mod:`giblet_kedro.evaluation.ridge`), fit on train rows, delays chosen on val rows.
    ``per_subject``: fit to the subjects' mean (the stimulus is shared)."""
    train_rows, val_rows, test_rows = (split_rows(fmri_split, which) for which in ("train", "val", "test"))
    bands = {name: feature_band(aligned.values, aligned.valid, train_rows,
                                is_codes=name == "audio" and np.issubdtype(aligned.values.dtype, np.integer))
             for name, aligned in present_modalities(video, audio, text).items()}
    target = np.asarray(fmri_train) if fmri_train.ndim == 2 else np.asarray(fmri_train).mean(0)
    run_starts = np.flatnonzero(np.r_[True, fmri_split["run"].to_numpy()[1:] != fmri_split["run"].to_numpy()[:-1]])
    if val_rows.size == 0:  # no val rows: nothing to choose on, use the first set
        val_rows = train_rows
    ridge = evaluate.ridge
    fit = fit_banded_ridge(bands, target, train_rows, val_rows, run_starts, ridge.delay_sets, ridge.alphas,
                           ridge.n_iter, int(experiment["seed"]))
    log.info("ridge reference: delays %s (val mean r %s), band weights %s", fit.delays, fit.val_scores,
             {k: round(v, 3) for k, v in fit.band_weights.items()})
    summary = {"model": "banded kernel ridge (himalaya MultipleKernelRidgeCV, random search)",
               "bands": {name: int(x.shape[1]) for name, x in bands.items()}, "delays_trs": fit.delays,
               "val_mean_r_by_delays": fit.val_scores, "band_weights_median": fit.band_weights,
               "alphas": list(ridge.alphas), "fit_rows": int(train_rows.size)}
    return {"rows": test_rows, "fmri": fit.prediction[test_rows]}, summary


def score_evaluation(model_predictions: dict[str, np.ndarray], ridge_predictions: dict[str, np.ndarray],
                     ridge_summary: dict, reconstruction: dict, intersubject: dict[str, np.ndarray],
                     fmri_train: np.ndarray,
                     fmri_split: pd.DataFrame, norm_stats: dict[str, np.ndarray], evaluate: EvaluateSpec,
                     experiment: dict[str, Any]) -> tuple[dict, nib.Nifti1Image, dict[str, np.ndarray]]:
    """Per-voxel r of the autoencoder and of the ridge reference on the test rows, their
    circular-shift significance, the noise ceiling; summaries overall, per test run and
    per subject (``per_subject``).

    *Reliable* voxels are those whose subjects agree beyond chance on the **val** rows
    (inter-subject r against a circular-shift null, FDR); selecting them on the test
    rows would inflate the ceiling they are compared with. The r-against-ceiling
    summaries and ``autoencoder_beats_ridge`` use them (all voxels when there are none).

    Returns the metrics (JSON), the autoencoder's r map (NIfTI, mask space) and the
    per-voxel arrays for the figures.
    """
    rows = model_predictions["rows"]
    measured = measured_fmri(fmri_train, rows)  # (S, n_test, V)
    target = "subject" if fmri_train.ndim == 3 else "average"
    rng = np.random.default_rng(int(experiment["seed"]))
    shifts = metrics.null_shifts(len(rows), evaluate.null_shifts, evaluate.min_shift_trs, rng)

    def score(prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.mean([metrics.pearson_columns(prediction, m) for m in measured], axis=0)
        null = np.mean([metrics.circular_shift_null(prediction, m, shifts) for m in measured], axis=0)
        return r, metrics.pooled_p_values(r, null)

    r_model, p_model = score(model_predictions["fmri"])
    r_ridge, p_ridge = score(ridge_predictions["fmri"])
    agreement_val = metrics.InterSubject.from_arrays(intersubject, "val")
    agreement_test = metrics.InterSubject.from_arrays(intersubject, "test")
    ceiling = rho = reliable = None
    if agreement_test.n_subjects > 1:
        rho = agreement_test.mean_pairwise()
        ceiling = metrics.noise_ceiling(rho, agreement_test.n_subjects, target)
        reliable = reliable_voxels(agreement_val, evaluate, rng)
    significant = metrics.fdr_significant(p_model, evaluate.fdr)
    summary = {
        "experiment": experiment["name"], "test_trs": int(len(rows)), "voxels": int(r_model.size),
        "mode": "per_subject" if fmri_train.ndim == 3 else "cross_subject",
        "null": {"kind": "circular shift of the prediction, pooled over voxels", "shifts": int(len(shifts)),
                 "min_shift_trs": evaluate.min_shift_trs, "fdr": evaluate.fdr},
        "autoencoder": _r_summary(r_model, p_model, evaluate.fdr, ceiling, reliable),
        "ridge": {**_r_summary(r_ridge, p_ridge, evaluate.fdr, ceiling, reliable), **ridge_summary},
        "reconstruction": reconstruction,
        "by_run": _by_run(fmri_split, rows, model_predictions["fmri"], ridge_predictions["fmri"], measured),
    }
    if ceiling is not None:
        summary["noise_ceiling"] = {
            "kind": "sqrt(Spearman-Brown(mean inter-subject r))" if target == "average" else "sqrt(mean inter-subject r)",
            "target": target, "subjects": agreement_test.n_subjects, "median": float(np.median(ceiling)),
            "mean_inter_subject_r_median": float(np.median(rho)), "reliable_voxels": int(reliable.sum()),
            "reliable_selected_on": f"val rows ({agreement_val.n_rows} TRs)"}
    if fmri_train.ndim == 3:
        ids = [str(s) for s in np.atleast_1d(norm_stats["subject_ids"])]
        summary["by_subject"] = {sid: float(np.median(metrics.pearson_columns(model_predictions["fmri"], m)))
                                 for sid, m in zip(ids, measured, strict=True)}
    voxels = reliable if reliable is not None and reliable.any() else np.ones(r_model.size, dtype=bool)
    summary["comparison"] = compare_models(model_predictions["fmri"], ridge_predictions["fmri"], measured, voxels,
                                           evaluate, rng, "reliable voxels" if reliable is not None else "all voxels")
    summary["autoencoder_beats_ridge"] = summary["comparison"]["difference"] >= 0
    maps = {"r_model": r_model, "r_ridge": r_ridge, "p_model": p_model, "significant": significant,
            "mask": norm_stats["mask"], "affine": norm_stats["affine"]}
    if ceiling is not None:
        maps |= {"ceiling": ceiling, "rho": rho, "reliable": reliable}
    comparison = summary["comparison"]
    log.info("evaluation: autoencoder mean r %.3f (median %.3f), %.0f%% of voxels significant, ceiling median %s; "
             "against ridge on %s: %+.3f (95%% CI %+.3f to %+.3f): %s", summary["autoencoder"]["mean_r"],
             summary["autoencoder"]["median_r"], 100 * summary["autoencoder"]["share_significant"],
             None if ceiling is None else round(float(np.median(ceiling)), 3), comparison["on"],
             comparison["difference"], *comparison["ci95"], comparison["verdict"])
    return summary, r_map_image(r_model, norm_stats), maps


def compare_models(model: np.ndarray, ridge: np.ndarray, measured: np.ndarray, voxels: np.ndarray,
                   evaluate: EvaluateSpec, rng: np.random.Generator, on: str, n_boot: int = 1000) -> dict[str, Any]:
    """Autoencoder against ridge: difference of mean r over ``voxels``, with a 95% moving-
    block bootstrap interval over test TRs (blocks of ``min_shift_trs``). The verdict is
    ``better`` or ``worse`` when the interval excludes 0, else ``no different``: with a
    few dozen test TRs, small differences are noise, and the report says so."""
    def mean_r(prediction: np.ndarray) -> float:
        return float(np.mean([metrics.pearson_columns(prediction[:, voxels], m[:, voxels]).mean() for m in measured]))

    difference = mean_r(model) - mean_r(ridge)
    boot = metrics.block_bootstrap_difference(model, ridge, measured, voxels, max(evaluate.min_shift_trs, 1), n_boot,
                                              rng)
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    verdict = "better" if low > 0 else "worse" if high < 0 else "no different"
    return {"on": on, "voxels": int(voxels.sum()), "autoencoder_mean_r": mean_r(model), "ridge_mean_r": mean_r(ridge),
            "difference": difference, "ci95": [low, high], "bootstrap": f"{n_boot} moving-block resamples of test TRs",
            "verdict": verdict}


def reliable_voxels(agreement: metrics.InterSubject, evaluate: EvaluateSpec, rng: np.random.Generator) -> np.ndarray:
    """(n_voxels,) bool: voxels whose mean inter-subject r on these rows beats a null of
    the first subject circularly shifted (pooled over voxels), at the evaluation's FDR.
    Fewer than 2 subjects, or too few rows for a shift: every voxel counts as reliable."""
    n_voxels = agreement.total.shape[1]
    if agreement.n_subjects < 2 or agreement.n_rows < 2 * max(evaluate.min_shift_trs, 1) + 1:
        return np.ones(n_voxels, dtype=bool)
    shifts = metrics.null_shifts(agreement.n_rows, min(evaluate.null_shifts, 50), evaluate.min_shift_trs, rng)
    null = np.stack([agreement.mean_pairwise_first_shifted(int(k)) for k in shifts])
    return metrics.fdr_significant(metrics.pooled_p_values(agreement.mean_pairwise(), null), evaluate.fdr)


def _r_summary(r: np.ndarray, p: np.ndarray, fdr: float, ceiling: np.ndarray | None,
               reliable: np.ndarray | None) -> dict[str, Any]:
    out = {"mean_r": float(r.mean()), "median_r": float(np.median(r)),
           "share_significant": float(metrics.fdr_significant(p, fdr).mean())}
    if ceiling is not None and reliable is not None and reliable.any():
        out["reliable_mean_r"] = float(r[reliable].mean())
        out["reliable_mean_ceiling"] = float(ceiling[reliable].mean())
        out["r_over_ceiling"] = float(r[reliable].mean() / max(ceiling[reliable].mean(), 1e-12))
    return out


def _by_run(split: pd.DataFrame, rows: np.ndarray, model: np.ndarray, ridge: np.ndarray,
            measured: np.ndarray) -> dict[str, dict[str, float]]:
    runs = split.set_index("tr").loc[rows, "run"].astype(str).to_numpy()
    out = {}
    for run in dict.fromkeys(runs):
        keep = runs == run
        if keep.sum() < 3:
            continue
        out[run] = {"test_trs": int(keep.sum()),
                    "autoencoder_mean_r": float(np.mean([metrics.pearson_columns(model[keep], m[keep]).mean()
                                                         for m in measured])),
                    "ridge_mean_r": float(np.mean([metrics.pearson_columns(ridge[keep], m[keep]).mean()
                                                   for m in measured]))}
    return out


def r_map_image(r: np.ndarray, norm_stats: dict[str, np.ndarray]) -> nib.Nifti1Image:
    """(n_voxels,) values -> a 3D float32 NIfTI in the runs' space (0 outside the mask)."""
    mask = np.asarray(norm_stats["mask"], dtype=bool)
    volume = np.zeros(mask.shape, dtype=np.float32)
    volume[mask] = r
    image = nib.Nifti1Image(volume, np.asarray(norm_stats["affine"], dtype=np.float64))
    image.header.set_intent("correlation", (), name="voxel r")
    return image


def plot_evaluation(maps: dict[str, np.ndarray], model_predictions: dict[str, np.ndarray],
                    experiment: dict[str, Any], count: int = 8):
    """The r-map slices and, with video, a grid of true and reconstructed test frames."""
    from giblet_kedro.evaluation.figures import frame_grid, message_figure, r_map_figure

    r_map = r_map_figure(maps, f"{experiment['name']}: held-out voxel r")
    if "video" not in model_predictions or not model_predictions["video_valid"].any():
        return r_map, message_figure("no video modality in this experiment")
    valid = np.flatnonzero(model_predictions["video_valid"])
    pick = valid[np.linspace(0, len(valid) - 1, min(count, len(valid))).round().astype(int)]
    labels = [f"TR {int(model_predictions['rows'][i])}" for i in pick]
    grid = frame_grid({"true": model_predictions["video_target"][pick], "autoencoder": model_predictions["video"][pick]},
                      labels, f"{experiment['name']}: test frames (HRF-convolved) and their reconstruction")
    return r_map, grid

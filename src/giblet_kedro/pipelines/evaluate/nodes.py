"""Evaluation nodes: predict held-out fMRI from the stimulus, score it voxel by voxel
against the noise ceiling and the ridge reference, and measure reconstruction.

Wiring over :mod:`giblet_kedro.evaluation`. "Held-out" rows are the split's ``test``
rows: a block at the end of every run (``split.by: blocks``) or whole runs
(``split.by: run``); never used for training, normalization statistics or model
selection. Val rows choose the reliable voxels and the ridge's delays.
"""

from __future__ import annotations

import logging
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy.stats import t as student_t

from giblet_kedro.evaluation import metrics, nulls
from giblet_kedro.evaluation.agreement import agreement_arrays
from giblet_kedro.evaluation.model import TrainedModel, ensemble_fmri, measured_fmri
from giblet_kedro.evaluation.reconstruction import reconstruction_metrics
from giblet_kedro.evaluation.ridge import feature_band, fit_banded_ridge, ridge_backend
from giblet_kedro.fmri import censor
from giblet_kedro.fmri.partials import subject_rows
from giblet_kedro.fmri.volume import unmask
from giblet_kedro.spec.schema import EvaluateSpec, FmriSpec
from giblet_kedro.training.job import TrainJob
from giblet_kedro.training.selection import weights_of

log = logging.getLogger(__name__)


def intersubject_agreement(stats: dict[str, np.ndarray], split: pd.DataFrame, fmri: FmriSpec,
                           evaluate: EvaluateSpec, **val_test_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Which voxels the subjects agree on (val rows; every subject shifted independently
    for the null) and the noise ceiling (test rows), from each subject's normalized val
    and test rows the fMRI stage's map kept (partition name -> ``(n_group, n_rows_run,
    n_voxels)``)."""
    covered = censor.coverage(stats)  # val and test rows uncensored in every subject, as the job's
    rows = {which: censor.usable_rows(split, covered, which) for which in ("val", "test")}
    data = subject_rows(val_test_rows, stats, split, fmri.subjects_per_group, rows)
    target = "subject" if fmri.mode == "per_subject" else "average"
    rng = np.random.default_rng(0)
    return agreement_arrays(data["val"], data["test"], target, evaluate.min_shift_trs, evaluate.null_draws, rng)


def predict_test(train_job: dict[str, Any], model_checkpoint: dict[str, torch.Tensor],
                 seed_checkpoints: dict[str, dict[str, torch.Tensor]]) -> tuple[dict[str, np.ndarray], dict]:
    """The autoencoder on the test rows' stimulus.

    Returns the predictions (``rows``, ``fmri`` (n_test, V) in model units, each
    modality's reconstruction and target, ``<m>_valid``; audio as predicted codes) and
    the reconstruction metrics. With ``train.seeds``, ``fmri`` (and ``subjects_fmri``) is
    the mean over the seeds' models, ``seed_fmri`` (n_seeds, n_test, V) each one's and
    ``seeds`` their seeds; the reconstructions are the first seed's model's.
    """
    job = TrainJob.from_dict(train_job)
    trained = TrainedModel.load(job, model_checkpoint)
    rows = np.asarray(trained.job.test_rows, dtype=np.int64)
    if rows.size == 0:
        raise ValueError("the split has no test TRs to evaluate on: set fmri.split.test (a fraction or runs)")
    targets = trained.batch(rows)
    outputs = trained.predict_rows(rows)
    saved: dict[str, np.ndarray] = {"rows": rows, "fmri": outputs["fmri"]}
    if trained.model.heads is not None:
        saved["subjects_fmri"] = trained.subject_fmri_rows(rows)
    if seed_checkpoints:  # the first model's predictions are reused, not computed again
        others = [TrainedModel.load(job, weights) for weights in seed_checkpoints.values()]
        saved |= ensemble_fmri(saved, others, rows)
        saved["seeds"] = np.array([job.seed, *(int(seed) for seed in seed_checkpoints)])
    for name in trained.modalities:
        saved[f"{name}_valid"] = targets[f"{name}_valid"]
        if name == "audio" and trained.job.shapes.audio_is_codes:
            saved["audio"] = outputs["audio"].argmax(axis=2).astype(np.int16)
            saved["audio_target"] = targets["audio"].astype(np.int16)
        else:
            saved[name], saved[f"{name}_target"] = outputs[name], targets[name]
    return saved, reconstruction_metrics(trained, outputs, targets)


def fit_ridge_reference(train_job: dict[str, Any], fmri_split: pd.DataFrame, evaluate: EvaluateSpec
                        ) -> tuple[dict[str, np.ndarray], dict]:
    """Banded ridge with FIR delays on the autoencoder's features (see
    :mod:`giblet_kedro.evaluation.ridge`), fit on train rows, delays chosen on val rows.
    ``per_subject``: fit to the subjects' mean (the stimulus is shared), over the
    uncensored subjects of each TR. Rows are the job's (censored TRs left out)."""
    job = TrainJob.from_dict(train_job)
    train_rows, val_rows, test_rows = (np.asarray(rows, dtype=np.int64)
                                       for rows in (job.train_rows, job.val_rows, job.test_rows))
    bands = {}
    for name in job.modalities:
        values = np.load(job.paths.values[name], mmap_mode="r")
        valid = np.load(job.paths.valid[name])
        bands[name] = feature_band(values, valid, train_rows, is_codes=name == "audio" and job.shapes.audio_is_codes)
    tensor = np.load(job.paths.fmri, mmap_mode="r")
    covered = np.load(job.paths.fmri_valid) if job.paths.fmri_valid else None
    target = np.asarray(tensor) if tensor.ndim == 2 else censor.uncensored_mean(tensor, covered)
    runs = fmri_split["run"].astype(str).to_numpy()
    run_starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]])
    if val_rows.size == 0:  # no val rows: nothing to choose on, use the first set
        val_rows = train_rows
    ridge = evaluate.ridge
    fit = fit_banded_ridge(bands, target, train_rows, val_rows, run_starts, ridge.delay_sets, ridge.alphas,
                           ridge.n_iter, job.seed, ridge_backend(ridge.backend))
    log.info("ridge reference: delays %s (val mean r %s), band weights %s", fit.delays, fit.val_scores,
             {k: round(v, 3) for k, v in fit.band_weights.items()})
    summary = {"model": "banded kernel ridge (himalaya MultipleKernelRidgeCV, random search)",
               "bands": {name: int(x.shape[1]) for name, x in bands.items()}, "delays_trs": fit.delays,
               "val_mean_r_by_delays": fit.val_scores, "band_weights_median": fit.band_weights,
               "alphas": list(ridge.alphas), "fit_rows": int(train_rows.size)}
    return {"rows": test_rows, "fmri": fit.prediction[test_rows]}, summary


def score_voxels(model_test_predictions: dict[str, np.ndarray], ridge_test_predictions: dict[str, np.ndarray],
                 fmri_intersubject: dict[str, np.ndarray], train_job: dict[str, Any], fmri_split: pd.DataFrame,
                 fmri_norm_stats: dict[str, np.ndarray], evaluate: EvaluateSpec
                 ) -> tuple[dict, nib.Nifti1Image, dict[str, np.ndarray]]:
    """Per-voxel r of the autoencoder and of the ridge on the test rows, each voxel
    against its own null (``evaluate.null``), the noise ceiling, the reliable voxels
    (chosen on val rows), and the comparison of the two models with a jackknife interval.

    Returns the scores (JSON), the autoencoder's r map (NIfTI) and the per-voxel arrays.
    """
    job = TrainJob.from_dict(train_job)
    rows = np.asarray(model_test_predictions["rows"])
    measured = measured_fmri(job, rows)  # (S, n_test, V)
    rng = np.random.default_rng(job.seed)
    model = nulls.voxel_test(evaluate.null, model_test_predictions["fmri"], measured, evaluate.null_draws,
                             evaluate.min_shift_trs, rng)
    ridge = nulls.voxel_test(evaluate.null, ridge_test_predictions["fmri"], measured, evaluate.null_draws,
                             evaluate.min_shift_trs, rng)
    ceiling = fmri_intersubject.get("ceiling")
    reliable = (metrics.fdr_significant(fmri_intersubject["val_p"], evaluate.fdr)
                if "val_p" in fmri_intersubject else None)
    n_test = len(rows)
    shifts_allowed = max(n_test - 2 * evaluate.min_shift_trs + 1, 0)
    scores: dict[str, Any] = {
        "test_trs": int(n_test), "voxels": int(model.observed.size), "mode": job.mode,
        "null": {**model.describe(), "fdr": evaluate.fdr,
                 "test_split_allows": {"circular_shifts": shifts_allowed,
                                       "min_p_with_shifts": 1 / (1 + shifts_allowed) if shifts_allowed else None,
                                       "min_p_with_phase": 1 / (1 + evaluate.null_draws)}},
        "autoencoder": _r_summary(model, evaluate.fdr, ceiling, reliable),
        "ridge": _r_summary(ridge, evaluate.fdr, ceiling, reliable),
        "by_run": _by_run(fmri_split, rows, model_test_predictions["fmri"], ridge_test_predictions["fmri"], measured),
    }
    if ceiling is not None:
        scores["noise_ceiling"] = {
            "kind": "sqrt(mean inter-subject r)" if job.mode == "per_subject"
            else "sqrt(Spearman-Brown(mean inter-subject r))",
            "subjects": int(fmri_intersubject["n_subjects"]), "median": float(np.median(ceiling)),
            "mean_inter_subject_r_median": float(np.median(fmri_intersubject["test_rho"]))}
        if reliable is not None:
            scores["noise_ceiling"] |= {
                "reliable_voxels": int(reliable.sum()),
                "reliable_selected_on": f"val rows ({int(fmri_intersubject['val_trs'])} TRs): mean pairwise "
                                        f"inter-subject r, BH-FDR {evaluate.fdr}",
                "reliability_null": {"kind": str(fmri_intersubject["val_null_kind"]),
                                     "draws": int(fmri_intersubject["val_null_draws"]),
                                     "distinct_null_values": int(fmri_intersubject["val_null_distinct"])}}
    voxels = reliable if reliable is not None and reliable.any() else np.ones(model.observed.size, dtype=bool)
    if job.mode == "per_subject" and len(measured) > 1:
        ids = [str(s) for s in np.atleast_1d(fmri_norm_stats["subject_ids"])]
        scores["by_subject"] = by_subject(model_test_predictions, measured, ids, voxels)
    if "seed_fmri" in model_test_predictions:
        scores["seeds"] = metrics.seed_spread(model_test_predictions["seed_fmri"], measured, voxels,
                                              np.asarray(model_test_predictions["seeds"]).tolist())
    scores["comparison"] = compare_models(model_test_predictions["fmri"], ridge_test_predictions["fmri"], measured,
                                          voxels, metrics.contiguous_blocks(rows, metrics.block_trs(evaluate.block_s,
                                                                                                   job.tr)),
                                          "reliable voxels" if reliable is not None and reliable.any()
                                          else "all voxels", scores.get("seeds"))
    maps = {"r_model": model.observed, "p_model": model.p, "r_ridge": ridge.observed, "p_ridge": ridge.p,
            "significant": metrics.fdr_significant(model.p, evaluate.fdr),
            "mask": fmri_norm_stats["mask"], "affine": fmri_norm_stats["affine"]}
    if ceiling is not None:
        maps |= {"ceiling": ceiling, "rho": fmri_intersubject["test_rho"]}
    if reliable is not None:
        maps |= {"reliable": reliable, "reliability_p": fmri_intersubject["val_p"]}
    comparison = scores["comparison"]
    log.info("evaluation: autoencoder mean r %.3f (median %.3f), %.0f%% of voxels significant (per-voxel %s null), "
             "ceiling median %s; against ridge on %s: %+.3f (95%% CI %+.3f to %+.3f): %s",
             scores["autoencoder"]["mean_r"], scores["autoencoder"]["median_r"],
             100 * scores["autoencoder"]["share_significant"], evaluate.null,
             None if ceiling is None else round(float(np.median(ceiling)), 3), comparison["on"],
             comparison["difference"], *comparison["ci95"], comparison["verdict"])
    image = unmask(model.observed.astype(np.float32), np.asarray(fmri_norm_stats["mask"], dtype=bool),
                   np.asarray(fmri_norm_stats["affine"], dtype=np.float64))
    image.header.set_intent("correlation", (), name="voxel r")
    return scores, image, maps


def summarize_evaluation(voxel_scores: dict, reconstruction: dict, ridge_reference: dict,
                         training_history: dict, experiment: dict[str, Any]) -> dict:
    """One JSON of every evaluation figure: voxel scores, reconstruction, the ridge's fit,
    and which epoch's weights were evaluated, and why."""
    summary = {"experiment": experiment["name"], "weights": weights_of(training_history), **voxel_scores,
               "reconstruction": reconstruction}
    summary["ridge"] = {**voxel_scores["ridge"], **ridge_reference}
    summary["autoencoder_beats_ridge"] = voxel_scores["comparison"]["difference"] >= 0
    return summary


def compare_models(model: np.ndarray, ridge: np.ndarray, measured: np.ndarray, voxels: np.ndarray,
                   blocks: list[np.ndarray], on: str, seeds: dict | None = None) -> dict[str, Any]:
    """Autoencoder against ridge: the difference of mean r over ``voxels``, with a 95%
    interval ``difference +- t(K - 1) * se``: ``se`` the delete-a-block jackknife's over
    the K ``blocks`` of test TRs (:func:`metrics.jackknife_se`), widened by the
    seeds' spread when the autoencoder is an ensemble of S > 1 models (``seeds``: the
    models' SD of mean r, so ``se^2 + SD^2 / S``; the ridge has no seed). The verdict is
    ``better`` or ``worse`` when the interval excludes 0, else ``no different``: with a
    few dozen test TRs, small differences are noise, and the report says so."""
    model_r, ridge_r = metrics.mean_r(model, measured, voxels), metrics.mean_r(ridge, measured, voxels)
    difference = model_r - ridge_r
    standard_error = metrics.jackknife_se(
        lambda rows: metrics.mean_r(model, measured, voxels, rows) - metrics.mean_r(ridge, measured, voxels, rows),
        len(model), blocks)
    interval = (f"delete-a-block jackknife over {len(blocks)} blocks of "
                f"{min(len(b) for b in blocks)}-{max(len(b) for b in blocks)} test TRs, t({len(blocks) - 1})")
    if seeds is not None and len(seeds["seeds"]) > 1:
        standard_error = float(np.hypot(standard_error, seeds["sd"] / np.sqrt(len(seeds["seeds"]))))
        interval += f", with the spread of {len(seeds['seeds'])} seeds"
    half = float(student_t.ppf(0.975, len(blocks) - 1)) * standard_error
    low, high = difference - half, difference + half
    verdict = "better" if low > 0 else "worse" if high < 0 else "no different"
    return {"on": on, "voxels": int(voxels.sum()), "autoencoder_mean_r": model_r, "ridge_mean_r": ridge_r,
            "difference": difference, "standard_error": standard_error, "ci95": [low, high], "blocks": len(blocks),
            "interval": interval, "verdict": verdict}


def _r_summary(test: nulls.VoxelTest, fdr: float, ceiling: np.ndarray | None,
               reliable: np.ndarray | None) -> dict[str, Any]:
    r = test.observed
    out = {"mean_r": float(r.mean()), "median_r": float(np.median(r)),
           "share_significant": float(metrics.fdr_significant(test.p, fdr).mean()),
           "share_p_below_0.05": float((test.p < 0.05).mean())}
    if ceiling is not None and reliable is not None and reliable.any():
        out["reliable_mean_r"] = float(r[reliable].mean())
        out["reliable_mean_ceiling"] = float(ceiling[reliable].mean())
        out["r_over_ceiling"] = float(r[reliable].mean() / max(ceiling[reliable].mean(), 1e-12))
    return out


def by_subject(predictions: dict[str, np.ndarray], measured: np.ndarray, ids: list[str], voxels: np.ndarray
               ) -> dict[str, dict[str, float]]:
    """Each subject's mean r over ``voxels`` (the reliable ones) against that subject's
    own ceiling, the leave-one-out inter-subject r: of the subject's head (when the model
    has heads) and of the average brain.

    predictions : ``fmri`` (n, V) the average brain; ``subjects_fmri`` (S, n, V) each
    subject's head, when present. measured : (S, n, V).
    """
    ceilings = metrics.leave_one_out_isc(measured)[:, voxels].mean(1)
    heads = predictions.get("subjects_fmri")

    def over(r: float, ceiling: float) -> float | None:  # no ratio over a ceiling at or near 0
        return r / ceiling if ceiling > 0.01 else None

    out = {}
    for index, sid in enumerate(ids):
        ceiling = float(ceilings[index])
        average = float(metrics.pearson_columns(predictions["fmri"], measured[index])[voxels].mean())
        entry = {"average_brain_mean_r": average, "loo_ceiling": ceiling,
                 "average_brain_r_over_ceiling": over(average, ceiling)}
        if heads is not None:
            own = float(metrics.pearson_columns(heads[index], measured[index])[voxels].mean())
            entry |= {"head_mean_r": own, "head_r_over_ceiling": over(own, ceiling), "head_gain": own - average}
        out[sid] = entry
    return out


def _by_run(split: pd.DataFrame, rows: np.ndarray, model: np.ndarray, ridge: np.ndarray,
            measured: np.ndarray) -> dict[str, dict[str, float]]:
    runs = split.set_index("tr").loc[rows, "run"].astype(str).to_numpy()
    every_voxel = np.ones(model.shape[1], dtype=bool)
    out = {}
    for run in dict.fromkeys(runs):
        keep = runs == run
        if keep.sum() < 3:
            continue
        out[run] = {"test_trs": int(keep.sum()),
                    "autoencoder_mean_r": metrics.mean_r(model, measured, every_voxel, keep),
                    "ridge_mean_r": metrics.mean_r(ridge, measured, every_voxel, keep)}
    return out

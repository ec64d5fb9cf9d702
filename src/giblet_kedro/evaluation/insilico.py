"""In silico experiments: the trained model's predicted brain response to a movie.

A new movie is cut into the experiment's TRs from ``predict.onset_s`` (row ``i`` is the
window ``[onset_s + i tr, onset_s + (i + 1) tr)`` of the movie), its features are
extracted exactly as the training movie's were, standardized with the saved training
statistics, and encoded. The voxel layer (or the fMRI head of a latent model) is the
prediction, in model units (each voxel standardized over the training TRs); restored,
it is in the units of the training tensor: each subject's z-score, averaged
(``cross_subject``) or one subject's (``per_subject``).

Leakage: a held-out run of the *training* movie is scored only on the movie windows of
the split's test TRs (the model saw the stimulus of every train TR, and val TRs chose
its checkpoint), so the score is the same generalization the evaluation measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import nibabel as nib
import numpy as np

from giblet_kedro.errors import InputDataError
from giblet_kedro.evaluation import metrics, nulls
from giblet_kedro.evaluation.model import TrainedModel
from giblet_kedro.stimulus.aligned import TrGrid
from giblet_kedro.training.data import input_stats

MODEL_MODALITIES = ("video", "audio", "text", "features")


def movie_grid(duration_s: float, tr: float, onset_s: float, label: str) -> TrGrid:
    """The TRs of a ``duration_s``-second movie from ``onset_s``: every whole TR window."""
    n_trs = math.floor((duration_s - onset_s) / tr + 1e-6)
    if n_trs < 1:
        raise InputDataError(f"{label}: the movie lasts {duration_s:.3f} s, less than one TR ({tr:g} s) after "
                             f"predict.onset_s ({onset_s:g} s); accepted: a movie at least one TR long")
    return TrGrid.single(tr, 0, n_trs, onset_s, run="predict")


def missing_modalities(needed: list[str], available: list[str], ablate: list[str]) -> list[str]:
    """Modalities the model reads that the new stimulus does not give and that are not ablated."""
    return [name for name in needed if name not in available and name not in ablate]


def missing_message(missing: list[str]) -> str:
    """What to do about modalities the model reads and the new stimulus does not give."""
    why = {"text": "no predict.annotations for it", "features": "a new movie has no lab features",
           "video": "the spec extracts no video", "audio": "the spec extracts no audio"}
    return (f"predict.stimulus: the model reads {missing}, which the new stimulus does not give ("
            + "; ".join(f"{m}: {why[m]}" for m in missing) + f"); give them, or add {missing} to predict.ablate to "
            "replace each with its training mean")


def model_inputs(values: dict[str, np.ndarray], valid: dict[str, np.ndarray], stats: dict[str, Any],
                 shapes: dict[str, tuple[int, ...]], ablate: list[str], audio_is_codes: bool,
                 n_trs: int) -> dict[str, np.ndarray]:
    """The model's inputs for ``n_trs`` TRs, in model units, as training reads them
    (:func:`giblet_kedro.training.data.model_inputs`).

    values : modality -> (n_trs, *sample) features as the stimulus stage extracts them
        (each TR's, before the HRF step); valid : modality -> (n_trs,) bool.
    stats : the training's ``loss_stats`` (the inputs' own statistics where they differ
        from the targets', :func:`~giblet_kedro.training.data.input_stats`).
    shapes : modality -> the sample shape the model was trained on.
    ablate : modalities replaced by their training mean (0 in model units; audio codes:
        each codebook's most frequent training code). TRs the movie does not cover get
        the training mean too.

    Returns modality -> (n_trs, *sample) float32 (audio codes int64).
    """
    inputs: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        codes = name == "audio" and audio_is_codes
        if name in ablate:
            inputs[name] = (np.broadcast_to(stats[name].mode_codes()[:, None], (n_trs, *shape)).copy() if codes
                            else np.zeros((n_trs, *shape), np.float32))
            continue
        given = np.asarray(values[name])
        if given.shape[1:] != tuple(shape):
            raise InputDataError(f"predict.stimulus: its {name} features have shape {list(given.shape[1:])} per TR, "
                                 f"the model was trained on {list(shape)}; extract them with the training spec's "
                                 f"stimulus.{name} settings")
        covered = np.asarray(valid[name], dtype=bool)
        if codes:
            inputs[name] = np.where(covered.reshape(-1, *([1] * len(shape))), given.astype(np.int64),
                                    stats[name].mode_codes()[:, None])
        else:
            standardized = input_stats(stats, name).standardize(given)
            standardized[~covered] = 0.0
            inputs[name] = standardized
    return inputs


def scored_rows(window_starts: np.ndarray, test_starts: np.ndarray | None, tr: float) -> np.ndarray:
    """Rows of a prediction to score against a measured run of the same movie.

    window_starts : (n,) movie seconds of each predicted TR. test_starts : movie seconds
    of the split's test TRs when the movie is the training movie (only those windows are
    scored), None for a movie the model never saw (every row). Two windows match when
    their starts are within half a TR.
    """
    rows = np.arange(len(window_starts))
    if test_starts is None:
        return rows
    test_starts = np.asarray(test_starts, dtype=np.float64)
    if test_starts.size == 0:
        return rows[:0]
    distance = np.abs(np.asarray(window_starts, dtype=np.float64)[:, None] - test_starts[None, :]).min(axis=1)
    return rows[distance < tr / 2]


def score_run(prediction: np.ndarray, measured: np.ndarray, null: str, draws: int, min_shift: int, fdr: float,
              rng: np.random.Generator) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Voxelwise Pearson r of a prediction against one measured run, each voxel against
    its own null (``evaluate.null``). prediction, measured : (n_rows, V).

    Returns the summary, r (V,) and p (V,)."""
    test = nulls.voxel_test(null, prediction, measured[None], draws, min_shift, rng)
    significant = metrics.fdr_significant(test.p, fdr)
    return ({"trs": int(prediction.shape[0]), "mean_r": float(test.observed.mean()),
             "median_r": float(np.median(test.observed)), "share_significant": float(significant.mean()),
             "null": test.describe()}, test.observed, test.p)


def ablation_effect(full: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """(V,) the share of each voxel's predicted variance that a modality carries: the
    variance of ``full - ablated`` over the variance of ``full`` (rows are TRs; 0 where
    the prediction is constant)."""
    variance = full.var(axis=0)
    change = (full - ablated).var(axis=0)
    return np.divide(change, variance, out=np.zeros_like(variance), where=variance > 0)


def segment_rows(window_starts: np.ndarray, tr: float, segment: tuple[float, float], label: str) -> np.ndarray:
    """Rows whose TR window lies inside ``[start_s, end_s]`` of the movie."""
    start, end = segment
    rows = np.flatnonzero((window_starts >= start - 1e-6) & (window_starts + tr <= end + 1e-6))
    if rows.size == 0:
        covered = (float(window_starts[0]), float(window_starts[-1] + tr)) if len(window_starts) else (0.0, 0.0)
        raise InputDataError(f"{label}: the segment [{start:g}, {end:g}] s holds no whole TR of the predicted movie "
                             f"(TRs of {tr:g} s cover {covered[0]:g} to {covered[1]:g} s); accepted: a segment at "
                             "least one TR long inside the movie")
    return rows


def contrast_map(prediction: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> dict[str, np.ndarray]:
    """Mean predicted response of segment a minus that of b, (V,), with Welch's t over
    the segments' TRs (descriptive: TRs are autocorrelated, so t overstates evidence)."""
    a, b = prediction[rows_a], prediction[rows_b]
    difference = a.mean(axis=0) - b.mean(axis=0)
    se = np.sqrt(a.var(axis=0, ddof=1) / max(len(a), 1) + b.var(axis=0, ddof=1) / max(len(b), 1)) \
        if len(a) > 1 and len(b) > 1 else np.zeros_like(difference)
    t = np.divide(difference, se, out=np.zeros_like(difference), where=se > 0)
    return {"difference": difference.astype(np.float32), "t": t.astype(np.float32)}


def modality_shift_test(predict: Callable[[int], np.ndarray], measured: np.ndarray, rows: np.ndarray,
                        shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Does a voxel's measured response follow one modality's timing? A permutation test.

    predict : shift -> (n_trs, V) the model's prediction with the modality's input
        circularly shifted by that many TRs (0: as it is; every other input as it is).
    measured : (n_subjects, n_rows, V) measured responses at ``rows`` of the prediction.
    shifts : the null's circular shifts (each at least ``min_shift`` from 0 and n_trs).

    The statistic is the subjects' mean Pearson r of prediction and measurement on the
    rows. Under the null (the voxel's measured response does not follow the modality's
    timing), the aligned input is one circular shift among the others (the movie's
    features are stationary), so ``p = (1 + #{r_shift >= r_aligned}) / (1 + shifts)``.

    Returns r with the aligned input (V,), the drop in r when the timing is broken
    (aligned minus the shifts' mean, (V,)) and p (V,).
    """
    def mean_r(prediction: np.ndarray) -> np.ndarray:
        return np.mean([metrics.pearson_columns(prediction[rows], m) for m in measured], axis=0)

    observed = mean_r(predict(0))
    exceed = np.zeros_like(observed)
    total = np.zeros_like(observed)
    for shift in shifts:
        r = mean_r(predict(int(shift)))
        exceed += r >= observed
        total += r
    return observed, observed - total / max(len(shifts), 1), (1.0 + exceed) / (1.0 + len(shifts))


class MoviePredictor:
    """The trained model on one movie's features (as :func:`extract_new_stimulus` writes
    them): its prediction with modalities ablated, or one modality shifted in time.

    arrays : ``<modality>`` (n_trs, *sample), ``<modality>_valid`` (n_trs,),
        ``window_starts_s`` (n_trs,). ablate : modalities always replaced by their
        training mean (``predict.ablate``).
    """

    def __init__(self, trained: TrainedModel, arrays: dict[str, np.ndarray], ablate: list[str]):
        self.trained, self.ablate = trained, list(ablate)
        needed = trained.modalities
        self.values = {m: np.asarray(arrays[m]) for m in needed if m in arrays}
        self.valid = {m: np.asarray(arrays[f"{m}_valid"], dtype=bool) for m in self.values}
        self.shapes = {m: tuple(getattr(trained.job.shapes, m)) for m in needed}
        self.n_trs = len(arrays["window_starts_s"])
        self._parts: dict[str, np.ndarray] | None = None
        missing = missing_modalities(needed, list(self.values), self.ablate)
        if missing:
            raise InputDataError(missing_message(missing))
        if not self.tested:
            raise InputDataError(f"predict.ablate: {self.ablate} ablates every modality the model reads "
                                 f"({list(self.shapes)}): the prediction would be the same at every TR; keep one")

    @property
    def tested(self) -> list[str]:
        """The modalities the model reads from the movie (not ablated)."""
        return [m for m in self.shapes if m not in self.ablate]

    def __call__(self, ablate: tuple[str, ...] = ()) -> np.ndarray:
        """(n_trs, V) model units, with ``ablate`` (beyond ``predict.ablate``) at their
        training mean."""
        return self.trained.predict_fmri(self._inputs(self.values, self.valid, ablate))

    def shifted(self, name: str, trs: int) -> np.ndarray:
        """(n_trs, V) model units with modality ``name``'s input circularly shifted by
        ``trs`` TRs (row ``i`` takes row ``i - trs``; its validity travels with it).

        Each encoder reads one TR at a time, so shifting a modality's input shifts its
        encoder outputs: only the temporal module and what follows it run again, on the
        shifted outputs, never the encoders (for the linear ``lags`` module the prediction
        is affine in them: the shift moves that modality's additive contribution, filtered
        again; tested against running the whole model on the shifted input)."""
        encoded = self._encoded()
        return self.trained.fmri_from_encoded(encoded | {name: np.roll(encoded[name], trs, axis=0)})

    def _inputs(self, values: dict[str, np.ndarray], valid: dict[str, np.ndarray],
                ablate: tuple[str, ...]) -> dict[str, np.ndarray]:
        return model_inputs(values, valid, self.trained.stats, self.shapes, [*self.ablate, *ablate],
                            self.trained.job.shapes.audio_is_codes, self.n_trs)

    def _encoded(self) -> dict[str, np.ndarray]:
        """Each modality's per-TR encoder outputs on the movie (computed once)."""
        if self._parts is None:
            self._parts = self.trained.encoder_outputs(self._inputs(self.values, self.valid, ()))
        return self._parts


class EnsemblePredictor:
    """Several models' :class:`MoviePredictor` (``train.seeds``) as one: each prediction
    is the mean of theirs. One model: that model's prediction, unchanged."""

    def __init__(self, members: list[MoviePredictor]):
        self.members = list(members)

    @property
    def tested(self) -> list[str]:
        return self.members[0].tested

    def __call__(self, ablate: tuple[str, ...] = ()) -> np.ndarray:
        """(n_trs, V) model units: the mean of every member's prediction."""
        if len(self.members) == 1:
            return self.members[0](ablate)
        return np.mean([member(ablate) for member in self.members], axis=0)


def movie_contrast(a: nib.Nifti1Image, b: nib.Nifti1Image, labels: tuple[str, str]) -> nib.Nifti1Image:
    """Two movies' predicted responses (4D NIfTI, as ``predicted_bold.nii.gz``): the mean
    of ``a`` minus that of ``b`` and Welch's t over their TRs (descriptive), as a 4D
    image of two volumes on their grid (0 outside the voxels either predicts)."""
    for image, label in zip((a, b), labels, strict=True):
        if image.ndim != 4 or image.shape[3] < 2:
            raise InputDataError(f"{label}: shape {image.shape}; accepted: a predicted response, 4D with at least "
                                 "two TRs (predicted_bold.nii.gz of kedro run --pipelines=predict)")
    if a.shape[:3] != b.shape[:3] or not np.allclose(a.affine, b.affine, atol=1e-4):
        raise InputDataError(f"{labels[1]}: grid {b.shape[:3]} does not match {labels[0]}'s {a.shape[:3]} (or their "
                             "affines differ); accepted: two predictions of one experiment's model")
    data_a, data_b = (np.asarray(image.dataobj, dtype=np.float32) for image in (a, b))
    inside = (data_a != 0).any(axis=3) | (data_b != 0).any(axis=3)
    stacked = np.concatenate([data_a[inside].T, data_b[inside].T])
    n_a = data_a.shape[3]
    maps = contrast_map(stacked, np.arange(n_a), np.arange(n_a, stacked.shape[0]))
    volume = np.zeros((*inside.shape, 2), np.float32)
    volume[inside] = np.stack([maps["difference"], maps["t"]], axis=1)
    image = nib.Nifti1Image(volume, a.affine)
    image.header["descrip"] = b"a - b mean; Welch t (descriptive)"
    return image

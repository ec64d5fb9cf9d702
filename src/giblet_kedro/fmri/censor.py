"""Censored volumes (scrubbing, non-steady-state) and the tensor rows that remain usable.

A confound strategy (nilearn's ``load_confounds_strategy``: ``scrubbing``, or any
strategy with non-steady-state volumes) censors some volumes of a run: they carry motion
artefacts, not signal. A censored volume of a subject is dropped everywhere:

- from that run's statistics (mean and std over its uncensored training TRs);
- from its cleaning: nilearn's ``signal.clean`` with ``sample_mask`` (censored volumes are
  removed before detrending and confound regression, or interpolated over for the
  Butterworth filter, as nilearn does), so a censored volume reaches no other TR;
- from the tensor: ``cross_subject`` averages, TR by TR, only the subjects whose volume
  is uncensored; ``per_subject`` marks the (subject, TR) sample invalid, for the fMRI and
  every stimulus modality alike.

Rows used for training need one uncensored subject; val and test rows (model selection,
scores and the noise ceiling) need every subject, so that the model, the ridge reference
and the ceiling are all scored on the same TRs with the same subjects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EMPTY = np.zeros(0, dtype=np.int64)


def censored_trs(kept_rows: list[int] | np.ndarray | None, skip_rows: int | None,
                 crop: tuple[int, int]) -> np.ndarray:
    """Crop-relative indices of the crop's TRs that a confound strategy censors.

    Parameters
    ----------
    kept_rows : the confound-table rows the strategy keeps (nilearn's ``sample_mask``);
        None keeps every volume.
    skip_rows : table rows before the run's first volume (row ``skip_rows + t`` is file
        TR ``t``); None as 0.
    crop : ``(start, stop)`` file TR indices of the analysed crop.

    Returns
    -------
    (n_censored,) int64, sorted, in ``[0, stop - start)``.
    """
    if kept_rows is None:
        return EMPTY
    kept_file_trs = np.asarray(kept_rows, dtype=np.int64) - int(skip_rows or 0)
    start, stop = crop
    return (np.setdiff1d(np.arange(start, stop), kept_file_trs) - start).astype(np.int64)


def stats_key(subject: str, run: str) -> str:
    """The ``fmri_norm_stats`` key of a run's censored TRs (crop-relative)."""
    return f"subject_{subject}_run_{run}_censored"


def coverage(stats: dict[str, np.ndarray]) -> np.ndarray:
    """Which subject has an uncensored volume at each row of the concatenated runs.

    Reads ``subject_ids``, ``run_ids``, each run's crop and each run's censored TRs (absent:
    none) from ``fmri_norm_stats``.

    Returns
    -------
    (n_subjects, n_trs) bool, subjects in the stats' order, rows as in ``fmri_train``.
    """
    subjects = [str(s) for s in np.atleast_1d(stats["subject_ids"])]
    runs = [str(r) for r in np.atleast_1d(stats["run_ids"])]
    lengths = [int(np.diff(stats[f"run_{run}_crop"])[0]) for run in runs]
    offsets = np.cumsum([0, *lengths])
    covered = np.ones((len(subjects), int(offsets[-1])), dtype=bool)
    for s, subject in enumerate(subjects):
        for offset, run in zip(offsets, runs, strict=False):
            censored = np.asarray(stats.get(stats_key(subject, run), EMPTY), dtype=np.int64)
            covered[s, offset + censored] = False
    return covered


def usable_rows(split: pd.DataFrame, covered: np.ndarray, which: str) -> np.ndarray:
    """Rows of the ``which`` part of the split that can be used: a training row with at
    least one uncensored subject, a val or test row with every subject uncensored.

    split : the split table (``tr``, ``split`` columns); covered : (n_subjects, n_trs) bool
    from :func:`coverage`. Returns (n,) int64 rows, increasing.
    """
    rows = split.loc[split["split"] == which, "tr"].to_numpy(dtype=np.int64)
    keep = covered[:, rows].any(axis=0) if which == "train" else covered[:, rows].all(axis=0)
    return rows[keep]


def uncensored_mean(tensor: np.ndarray, covered: np.ndarray | None) -> np.ndarray:
    """(n_trs, V) float32: each TR's mean over the subjects of a (S, n_trs, V) tensor whose
    volume is uncensored (``covered`` (S, n_trs) bool; None: all), 0 where none is."""
    if covered is None or covered.all():
        return np.asarray(tensor).mean(0)
    total = np.zeros(tensor.shape[1:], dtype=np.float32)
    for subject in range(tensor.shape[0]):
        total += np.where(covered[subject][:, None], np.asarray(tensor[subject]), np.float32(0.0))
    return total / np.maximum(covered.sum(axis=0), 1).astype(np.float32)[:, None]

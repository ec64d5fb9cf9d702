"""Apply saved per-subject statistics, stream by stream, and combine subjects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from giblet_kedro.fmri.clean import clean_run
from giblet_kedro.fmri.reader import RunHeader, iter_blocks
from giblet_kedro.progress import progress


def zscore_run(
    header: RunHeader,
    crop: tuple[int, int],
    columns: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    block_trs: int,
    out: np.ndarray,
    accumulate: bool = False,
) -> None:
    """Z-score TRs ``[start, stop)`` of a run with *given* statistics into ``out``.

    Parameters
    ----------
    header : the run.
    crop : ``(start, stop)`` file TR indices.
    columns : (n_voxels,) file-order flat indices of the mask voxels (C-order listing).
    mean, std : (n_voxels,) the subject's saved training statistics.
    block_trs : TRs read at a time.
    out : (stop - start, n_voxels) float32, written (or added to, if ``accumulate``).
    """
    start, stop = crop
    mean32 = mean.astype(np.float32)
    inv_std32 = (1.0 / std).astype(np.float32)
    for t0, block in iter_blocks(header, start, stop, block_trs, columns):
        block -= mean32
        block *= inv_std32
        rows = slice(t0 - start, t0 - start + block.shape[0])
        if accumulate:
            out[rows] += block
        else:
            out[rows] = block


@dataclass(frozen=True)
class RunSource:
    """One subject's run and what normalizes it.

    crop : ``(start, stop)`` file TR indices.
    mean, std : (n_voxels,) the statistics it is z-scored with.
    operator : (n, n) cleaning operator (see :mod:`giblet_kedro.fmri.clean`), or None.
    """

    header: RunHeader
    crop: tuple[int, int]
    mean: np.ndarray
    std: np.ndarray
    operator: np.ndarray | None = None

    @property
    def n_trs(self) -> int:
        return self.crop[1] - self.crop[0]


def normalize_source(source: RunSource, columns: np.ndarray, block_trs: int, out: np.ndarray,
                     accumulate: bool = False) -> None:
    """Clean (if it has an operator) and z-score one run into ``out`` ((n_trs, n_voxels) float32)."""
    if source.operator is None:
        zscore_run(source.header, source.crop, columns, source.mean, source.std, block_trs, out, accumulate)
        return
    cleaned = clean_run(source.header, source.crop, columns, source.operator, block_trs)
    cleaned -= source.mean.astype(np.float32)
    cleaned *= (1.0 / source.std).astype(np.float32)
    if accumulate:
        out += cleaned
    else:
        out[...] = cleaned


def combine_subjects(
    subjects: Sequence[Sequence[RunSource]],
    columns: np.ndarray,
    mode: str,
    block_trs: int,
) -> np.ndarray:
    """Normalize every subject's runs with their own statistics, concatenate each subject's
    runs in time, then combine subjects.

    Parameters
    ----------
    subjects : per subject, its runs in concatenation order (the same crops for all).

    Returns
    -------
    ndarray, float32
        ``cross_subject``: the across-subject mean, shape (n_trs, n_voxels);
        ``per_subject``: subjects kept apart, shape (n_subjects, n_trs, n_voxels), where
        ``n_trs`` is the sum of the runs' cropped TRs. One run is in flight at a time.
    """
    offsets = np.cumsum([0] + [run.n_trs for run in subjects[0]])
    n_trs, n_voxels = int(offsets[-1]), len(columns)
    if mode not in ("cross_subject", "per_subject"):
        raise ValueError(f"unknown fmri.mode {mode!r}; accepted: 'cross_subject', 'per_subject'")
    if mode == "cross_subject":
        out = np.zeros((n_trs, n_voxels), dtype=np.float32)
    else:
        out = np.empty((len(subjects), n_trs, n_voxels), dtype=np.float32)
    with progress("fMRI z-scores", sum(len(runs) for runs in subjects), "runs") as advance:
        for index, runs in enumerate(subjects):
            for offset, run in zip(offsets, runs, strict=False):
                if mode == "cross_subject":
                    normalize_source(run, columns, block_trs, out[offset: offset + run.n_trs], accumulate=True)
                else:
                    normalize_source(run, columns, block_trs, out[index, offset: offset + run.n_trs])
                advance()
    if mode == "cross_subject":
        out /= np.float32(len(subjects))
    return out

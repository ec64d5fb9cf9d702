"""Apply saved per-subject statistics, stream by stream, and combine subjects."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from giblet_kedro.fmri.reader import RunHeader, iter_blocks


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


def combine_subjects(
    headers: Sequence[RunHeader],
    crop: tuple[int, int],
    columns: np.ndarray,
    means: Sequence[np.ndarray],
    stds: Sequence[np.ndarray],
    mode: str,
    block_trs: int,
) -> np.ndarray:
    """Z-score every subject with its own statistics, then combine.

    Returns
    -------
    ndarray, float32
        ``cross_subject``: the across-subject mean, shape (n_trs, n_voxels);
        ``per_subject``: subjects kept apart, shape (n_subjects, n_trs, n_voxels).
        Only one subject's block is in flight at a time.
    """
    n_trs = crop[1] - crop[0]
    n_voxels = len(columns)
    if mode == "cross_subject":
        total = np.zeros((n_trs, n_voxels), dtype=np.float32)
        for header, mean, std in zip(headers, means, stds, strict=True):
            zscore_run(header, crop, columns, mean, std, block_trs, total, accumulate=True)
        total /= np.float32(len(headers))
        return total
    if mode == "per_subject":
        stacked = np.empty((len(headers), n_trs, n_voxels), dtype=np.float32)
        for index, (header, mean, std) in enumerate(zip(headers, means, stds, strict=True)):
            zscore_run(header, crop, columns, mean, std, block_trs, stacked[index])
        return stacked
    raise ValueError(f"unknown fmri.mode {mode!r}; accepted: 'cross_subject', 'per_subject'")

"""Apply saved per-subject statistics, stream by stream, and combine subjects."""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from dataclasses import dataclass, field

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
    censored : crop-relative TRs censored by the confound strategy (see
        :mod:`giblet_kedro.fmri.censor`); they are written as 0 and left out of averages.
    """

    header: RunHeader
    crop: tuple[int, int]
    mean: np.ndarray
    std: np.ndarray
    operator: np.ndarray | None = None
    censored: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_trs(self) -> int:
        return self.crop[1] - self.crop[0]


def normalize_source(source: RunSource, columns: np.ndarray, block_trs: int, out: np.ndarray,
                     accumulate: bool = False) -> None:
    """Clean (if it has an operator) and z-score one run into ``out`` ((n_trs, n_voxels)
    float32); its censored TRs are 0 (nothing is added to them when ``accumulate``)."""
    if source.operator is None and not len(source.censored):
        zscore_run(source.header, source.crop, columns, source.mean, source.std, block_trs, out, accumulate)
        return
    if source.operator is None:
        cleaned = np.empty((source.n_trs, len(columns)), dtype=np.float32)
        zscore_run(source.header, source.crop, columns, source.mean, source.std, block_trs, cleaned)
    else:
        cleaned = clean_run(source.header, source.crop, columns, source.operator, block_trs)
        cleaned -= source.mean.astype(np.float32)
        cleaned *= (1.0 / source.std).astype(np.float32)
    cleaned[source.censored] = 0.0
    if accumulate:
        out += cleaned
    else:
        out[...] = cleaned


def combine_subjects(
    subjects: Sequence[Sequence[RunSource]],
    columns: np.ndarray,
    mode: str,
    block_trs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalize every subject's runs with their own statistics, concatenate each subject's
    runs in time, then combine subjects.

    Parameters
    ----------
    subjects : per subject, its runs in concatenation order (the same crops for all).

    Returns
    -------
    tensor : ndarray, float32
        ``cross_subject``: at each TR, the mean over the subjects whose volume is not
        censored, shape (n_trs, n_voxels) (0 where every subject is censored);
        ``per_subject``: subjects kept apart, shape (n_subjects, n_trs, n_voxels), 0 at
        censored TRs. ``n_trs`` is the sum of the runs' cropped TRs. One run is in flight
        at a time.
    covered : (n_subjects, n_trs) bool, False where a subject's volume is censored.
    """
    offsets = np.cumsum([0] + [run.n_trs for run in subjects[0]])
    n_trs, n_voxels = int(offsets[-1]), len(columns)
    if mode not in ("cross_subject", "per_subject"):
        raise ValueError(f"unknown fmri.mode {mode!r}; accepted: 'cross_subject', 'per_subject'")
    if mode == "cross_subject":
        out = np.zeros((n_trs, n_voxels), dtype=np.float32)
    else:
        out = np.empty((len(subjects), n_trs, n_voxels), dtype=np.float32)
    covered = np.ones((len(subjects), n_trs), dtype=bool)
    with progress("fMRI z-scores", sum(len(runs) for runs in subjects), "runs") as advance:
        for index, runs in enumerate(subjects):
            for offset, run in zip(offsets, runs, strict=False):
                covered[index, offset + np.asarray(run.censored, dtype=np.int64)] = False
                if mode == "cross_subject":
                    normalize_source(run, columns, block_trs, out[offset: offset + run.n_trs], accumulate=True)
                else:
                    normalize_source(run, columns, block_trs, out[index, offset: offset + run.n_trs])
                advance()
    if mode == "cross_subject":
        _average(out, covered)
    return out, covered


def _average(summed: np.ndarray, covered: np.ndarray) -> None:
    """Divide the subjects' sum, in place, by how many subjects each TR covers."""
    counts = covered.sum(axis=0)
    if (counts == len(covered)).all():
        summed /= np.float32(len(covered))  # in place: no second copy of the tensor
    else:
        summed /= np.maximum(counts, 1).astype(np.float32)[:, None]


def _release(array: np.ndarray) -> None:
    """Let the kernel drop the pages of a memory-mapped partial once it is added: the
    reduce would otherwise hold every subject's pages (n_subjects x the tensor) in its
    resident memory until it returns."""
    mapped = getattr(array, "_mmap", None) if isinstance(array, np.memmap) else None
    if mapped is not None and hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_DONTNEED)


def combine_partials(
    partials: Sequence[Sequence[np.ndarray]],
    covered: np.ndarray,
    mode: str,
    block_trs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`combine_subjects` from runs already normalized (the map-reduce fMRI stage):
    the same additions in the same order, so the result is bitwise the same.

    Parameters
    ----------
    partials : per subject, its runs in concatenation order, each ``(n_trs_run,
        n_voxels)`` float32 as :func:`normalize_source` writes it (0 at censored TRs);
        memory maps are read ``block_trs`` rows at a time.
    covered : (n_subjects, n_trs) bool, False at censored volumes
        (:func:`giblet_kedro.fmri.censor.coverage` of the saved statistics).

    Returns ``(tensor, covered)`` as :func:`combine_subjects`.
    """
    if mode not in ("cross_subject", "per_subject"):
        raise ValueError(f"unknown fmri.mode {mode!r}; accepted: 'cross_subject', 'per_subject'")
    offsets = np.cumsum([0] + [run.shape[0] for run in partials[0]])
    n_trs, n_voxels = int(offsets[-1]), partials[0][0].shape[1]
    shape = (n_trs, n_voxels) if mode == "cross_subject" else (len(partials), n_trs, n_voxels)
    out = np.zeros(shape, dtype=np.float32)
    for index, runs in enumerate(partials):
        for offset, stop, run in zip(offsets[:-1], offsets[1:], runs, strict=True):
            if run.shape != (stop - offset, n_voxels):
                raise ValueError(f"subject {index}: a normalized run of shape {run.shape} where "
                                 f"{(int(stop - offset), n_voxels)} was expected")
            for t0 in range(0, run.shape[0], block_trs):
                block = run[t0: t0 + block_trs]
                rows = slice(offset + t0, offset + t0 + block.shape[0])
                if mode == "cross_subject":
                    out[rows] += block
                else:
                    out[index, rows] = block
            _release(run)
    if covered.shape != (len(partials), n_trs):
        raise ValueError(f"coverage of shape {covered.shape} for {len(partials)} subjects and {n_trs} TRs")
    if mode == "cross_subject":
        _average(out, covered)
    return out, covered

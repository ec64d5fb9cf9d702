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
        rows = slice(t0 - start, t0 - start + block.shape[0])
        if accumulate:
            block -= mean32
            block *= inv_std32
            out[rows] += block
        else:  # straight into ``out``: one pass over the block fewer
            np.subtract(block, mean32, out=out[rows])
            out[rows] *= inv_std32


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


def subject_groups(subject_ids: list, size: int) -> list[list]:
    """The subjects, in saved order, cut into ``ceil(n / size)`` contiguous groups whose
    sizes differ by one at most (larger groups first): the subjects one map node of the
    second pass sums, and so the order in which the cross-subject mean adds."""
    if size < 1:
        raise ValueError(f"fmri.subjects_per_group must be at least 1, not {size}")
    n_groups = max(1, -(-len(subject_ids) // size))
    base, extra = divmod(len(subject_ids), n_groups)
    groups, start = [], 0
    for index in range(n_groups):
        stop = start + base + (index < extra)
        groups.append(list(subject_ids[start:stop]))
        start = stop
    return groups


def combine_subjects(
    subjects: Sequence[Sequence[RunSource]],
    columns: np.ndarray,
    mode: str,
    block_trs: int,
    group_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalize every subject's runs with their own statistics, concatenate each subject's
    runs in time, then combine subjects.

    Parameters
    ----------
    subjects : per subject, its runs in concatenation order (the same crops for all).
    group_size : ``fmri.subjects_per_group``. ``cross_subject`` sums the subjects of each
        group (:func:`subject_groups`), then adds the group
        sums in order: the additions of the map-reduce stage, so the two agree bitwise.

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
    groups = subject_groups(list(range(len(subjects))), group_size)
    if mode == "cross_subject":
        out = np.zeros((n_trs, n_voxels), dtype=np.float32)
        # one group: its sum is the total (0 + sum), so no second buffer
        group_sum = out if len(groups) == 1 else np.empty_like(out)
    else:
        out = np.empty((len(subjects), n_trs, n_voxels), dtype=np.float32)
    covered = np.ones((len(subjects), n_trs), dtype=bool)
    with progress("fMRI z-scores", sum(len(runs) for runs in subjects), "runs") as advance:
        for group in groups:
            if mode == "cross_subject" and group_sum is not out:
                group_sum[...] = 0.0
            for index in group:
                for offset, run in zip(offsets, subjects[index], strict=False):
                    covered[index, offset + np.asarray(run.censored, dtype=np.int64)] = False
                    if mode == "cross_subject":
                        normalize_source(run, columns, block_trs, group_sum[offset: offset + run.n_trs],
                                         accumulate=True)
                    else:
                        normalize_source(run, columns, block_trs, out[index, offset: offset + run.n_trs])
                    advance()
            if mode == "cross_subject" and group_sum is not out:
                out += group_sum
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


def release_pages(array: np.ndarray) -> None:
    """Let the kernel drop the pages of a memory-mapped array once it is read (a partial
    added by the reduce, a run's kept voxels normalized by a map node): the process
    would otherwise hold every one's pages in its resident memory until it returns
    (n_subjects x the tensor, for the reduce). Anything else is left alone."""
    mapped = getattr(array, "_mmap", None) if isinstance(array, np.memmap) else None
    if mapped is not None and hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_DONTNEED)


def combine_groups(
    groups: Sequence[tuple[Sequence[str], Sequence[np.ndarray]]],
    covered: np.ndarray,
    mode: str,
    block_trs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`combine_subjects` from the map's group partials (the map-reduce fMRI stage):
    the same additions in the same order, so the result is bitwise the same.

    Parameters
    ----------
    groups : per group of subjects (saved order), its subjects and its runs in
        concatenation order: ``cross_subject`` each ``(n_trs_run, n_voxels)`` float32, the
        sum of the group's normalized runs (0 added at censored TRs); ``per_subject``
        each ``(n_group, n_trs_run, n_voxels)``, the runs stacked. Memory maps are read
        ``block_trs`` rows at a time.
    covered : (n_subjects, n_trs) bool, False at censored volumes
        (:func:`giblet_kedro.fmri.censor.coverage` of the saved statistics).

    Returns ``(tensor, covered)`` as :func:`combine_subjects`.
    """
    if mode not in ("cross_subject", "per_subject"):
        raise ValueError(f"unknown fmri.mode {mode!r}; accepted: 'cross_subject', 'per_subject'")
    first_runs = groups[0][1]
    offsets = np.cumsum([0] + [run.shape[-2] for run in first_runs])
    n_trs, n_voxels = int(offsets[-1]), first_runs[0].shape[-1]
    n_subjects = sum(len(subjects) for subjects, _ in groups)
    shape = (n_trs, n_voxels) if mode == "cross_subject" else (n_subjects, n_trs, n_voxels)
    out = np.zeros(shape, dtype=np.float32)
    first = 0
    for subjects, runs in groups:
        for offset, stop, run in zip(offsets[:-1], offsets[1:], runs, strict=True):
            expected = (int(stop - offset), n_voxels) if mode == "cross_subject" else \
                (len(subjects), int(stop - offset), n_voxels)
            if run.shape != expected:
                raise ValueError(f"subjects {list(subjects)}: a normalized run of shape {run.shape} where "
                                 f"{expected} was expected (fmri.mode {mode!r})")
            for t0 in range(0, run.shape[-2], block_trs):
                rows = slice(offset + t0, offset + min(t0 + block_trs, stop - offset))
                if mode == "cross_subject":
                    out[rows] += run[t0: t0 + block_trs]
                else:
                    out[first: first + len(subjects), rows] = run[:, t0: t0 + block_trs]
            release_pages(run)
        first += len(subjects)
    if covered.shape != (n_subjects, n_trs):
        raise ValueError(f"coverage of shape {covered.shape} for {n_subjects} subjects and {n_trs} TRs")
    if mode == "cross_subject":
        _average(out, covered)
    return out, covered

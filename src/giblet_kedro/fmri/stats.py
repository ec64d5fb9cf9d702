"""Per-subject voxel statistics in one streaming pass, and the brain mask.

The mean and std of each voxel are computed over the training TRs only, block by block,
by merging per-block moments (Chan et al., 1979) in float64: memory is a few vectors per
subject, whatever the run length, and the result equals numpy's two-pass ``mean``/``std``
to float64 rounding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.clean import clean_run
from giblet_kedro.fmri.moments import RunningMoments
from giblet_kedro.fmri.reader import RunHeader, iter_blocks

log = logging.getLogger(__name__)


@dataclass
class SubjectMoments:
    """One subject's run's statistics over the voxels that were read (its ``columns``).

    mean, std : (n_columns,) float64 over the run's training TRs, after cleaning when the
        run is cleaned; None for a run without training TRs (held out whole).
    nonfinite : (n_columns,) bool, any NaN/inf in the crop.
    early_std : (n_columns,) float64 or None, std over the run's first training TRs (lab
        mask rule).
    moments : the running moments behind ``mean``/``std`` (to pool runs).
    raw_var : (n_columns,) float64 or None; for a cleaned run, the variance before
        cleaning over the same TRs (for the share of variance cleaning removed).
    """

    mean: np.ndarray | None
    std: np.ndarray | None
    nonfinite: np.ndarray
    early_std: np.ndarray | None
    moments: RunningMoments | None = None
    raw_var: np.ndarray | None = None

    @property
    def has_training_trs(self) -> bool:
        return self.mean is not None


def _flags(n_trs: int, rows: np.ndarray | None) -> np.ndarray:
    flags = np.zeros(n_trs, dtype=bool)
    if rows is not None and len(rows):
        flags[np.asarray(rows)] = True
    return flags


def subject_moments(
    header: RunHeader,
    crop: tuple[int, int],
    train: np.ndarray,
    ddof: int,
    block_trs: int,
    columns: np.ndarray | None = None,
    early_rows: np.ndarray | None = None,
    on_raw: Callable[[int, np.ndarray], None] | None = None,
) -> SubjectMoments:
    """Stream one run once and return its per-voxel statistics.

    Parameters
    ----------
    header : the run.
    crop : ``(start, stop)`` file TR indices; nothing outside is read.
    train : sorted crop-relative indices of training TRs (empty: only the non-finite
        flags are computed).
    ddof : degrees of freedom of the std.
    block_trs : TRs read at a time.
    columns : voxels to read (file-order flat indices); all if None.
    early_rows : crop-relative TRs to also compute a std over (the lab mask rule).
    on_raw : sees each raw block (see :func:`~giblet_kedro.fmri.reader.iter_blocks`).
    """
    start, stop = crop
    n_columns = header.n_grid_voxels if columns is None else len(columns)
    train_moments = RunningMoments(n_columns)
    early = RunningMoments(n_columns) if early_rows is not None else None
    nonfinite = np.zeros(n_columns, dtype=bool)
    is_train, is_early = _flags(stop - start, train), _flags(stop - start, early_rows)
    check_finite = header.dtype.kind == "f"
    for t0, block in iter_blocks(header, start, stop, block_trs, columns, on_raw):
        rows = slice(t0 - start, t0 - start + block.shape[0])
        if check_finite:
            nonfinite |= ~np.isfinite(block).all(axis=0)
        selected = is_train[rows]
        if selected.any():
            train_moments.update(block if selected.all() else block[selected])
        if early is not None and is_early[rows].any():
            early.update(block[is_early[rows]])
    trained = train_moments.count > 0
    return SubjectMoments(
        mean=train_moments.mean if trained else None,
        std=train_moments.std(ddof) if trained else None,
        nonfinite=nonfinite,
        early_std=early.std(ddof) if early is not None else None,
        moments=train_moments if trained else None,
    )


# A cleaned voxel whose std falls below this share of its raw std was constant before
# cleaning (or fully explained by the confounds): float rounding, not signal.
CLEANED_FLAT_RATIO = 1e-5


def cleaned_moments(
    header: RunHeader,
    crop: tuple[int, int],
    train: np.ndarray,
    ddof: int,
    block_trs: int,
    operator: np.ndarray,
    columns: np.ndarray | None = None,
    early_rows: np.ndarray | None = None,
    on_raw: Callable[[int, np.ndarray], None] | None = None,
) -> SubjectMoments:
    """Like :func:`subject_moments`, on the run cleaned by ``operator`` (see
    :mod:`giblet_kedro.fmri.clean`); the raw moments come from the same single read.
    ``train`` must not be empty (a run without training TRs needs no cleaning here).

    ``early_std`` (lab mask rule) is taken on the raw data, as the lab did.
    """
    start, stop = crop
    n_columns = header.n_grid_voxels if columns is None else len(columns)
    raw = RunningMoments(n_columns)
    early = RunningMoments(n_columns) if early_rows is not None else None
    is_train, is_early = _flags(stop - start, train), _flags(stop - start, early_rows)

    def observe(rows: slice, block: np.ndarray) -> None:
        selected = is_train[rows]
        if selected.any():
            raw.update(block if selected.all() else block[selected])
        if early is not None and is_early[rows].any():
            early.update(block[is_early[rows]])

    cleaned = clean_run(header, crop, columns, operator, block_trs, on_block=observe, on_raw=on_raw)
    nonfinite = ~np.isfinite(cleaned).all(axis=0)
    moments = RunningMoments(n_columns)
    contiguous = train.size and train[-1] - train[0] + 1 == train.size
    # Training TRs are usually one block: a view, not a copy of the cleaned run.
    moments.update(cleaned[train[0]: train[-1] + 1] if contiguous else cleaned[train])
    std = moments.std(ddof)
    raw_std = raw.std(ddof)
    with np.errstate(invalid="ignore"):
        std = np.where((raw_std == 0) | (std <= CLEANED_FLAT_RATIO * raw_std), 0.0, std)
    return SubjectMoments(
        mean=moments.mean, std=std, nonfinite=nonfinite,
        early_std=early.std(ddof) if early is not None else None,
        moments=moments, raw_var=raw_std**2,
    )


def pooled_training_stats(runs: list[RunningMoments], ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """A subject's training statistics pooled over its runs: the mean over every training
    TR, and the std from the **within-run** variance only,
    ``sqrt(sum_r m2_r / (sum_r n_r - ddof * R))``. Between-run differences of the mean
    (a new session's baseline) would inflate a std pooled over all TRs; they are not
    the scale of a new run's fluctuations.

    runs : the training moments of the runs that have training TRs (R of them).
    """
    trained = list(runs)
    if not trained:
        raise ValueError("no run with training TRs to pool")
    pooled = RunningMoments(len(trained[0].mean))
    for moments in trained:
        pooled.merge(moments)
    within = sum(m.m2 for m in trained)
    dof = sum(m.count for m in trained) - ddof * len(trained)
    if dof <= 0:
        raise ValueError(f"{sum(m.count for m in trained)} training TRs cannot give a std with ddof={ddof}")
    return pooled.mean, np.sqrt(within / dof)


def _ijk(columns_selected: np.ndarray, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    i, j, k = np.unravel_index(int(columns_selected), grid, order="F")
    return int(i), int(j), int(k)


def check_not_flat(label: str, moments: SubjectMoments, path) -> None:
    """A run constant in every voxel (e.g. an all-zero file) is an error, not data."""
    if not moments.has_training_trs:
        return
    usable = (moments.std > 0) & ~moments.nonfinite
    if not usable.any():
        raise InputDataError(
            f"{label} ({path}): every voxel is constant (or non-finite) over the "
            "training TRs, e.g. an all-zero file; it carries no signal to z-score. Remove the "
            "subject from fmri.subjects (or replace the file)"
        )


def auto_mask(moments: dict[str, SubjectMoments], grid: tuple[int, int, int]) -> np.ndarray:
    """Voxels with finite values in every run and nonzero training std in every run with
    training TRs, of every subject.

    Returns a boolean ``grid`` array. Voxels dropped for NaN/inf are logged per subject.
    """
    keep = np.ones(int(np.prod(grid)), dtype=bool)
    for subject, m in moments.items():
        if m.nonfinite.any():
            log.warning("%s: %d voxels hold NaN/inf and are left out of the auto mask",
                        subject, int(m.nonfinite.sum()))
        keep &= ~m.nonfinite
        if m.has_training_trs:
            keep &= m.std > 0
    if not keep.any():
        raise InputDataError("the auto mask is empty: no voxel varies in every subject")
    return keep.reshape(grid, order="F")


def lab_mask(moments: dict[str, SubjectMoments], grid: tuple[int, int, int],
             percentile: float, min_subject_fraction: float) -> np.ndarray:
    """The lab's rule: early std above the subject's ``percentile`` of nonzero early stds,
    in at least ``min_subject_fraction`` of subjects."""
    votes = np.zeros(int(np.prod(grid)), dtype=np.int32)
    for subject, m in moments.items():
        early = np.where(m.nonfinite, 0.0, m.early_std)
        nonzero = early[early > 0]
        if nonzero.size == 0:
            raise InputDataError(f"{subject}: no voxel varies over the first TRs (lab mask rule)")
        votes += early > np.percentile(nonzero, percentile)
    needed = math.ceil(min_subject_fraction * len(moments) - 1e-9)
    keep = votes >= needed
    if not keep.any():
        raise InputDataError("the lab mask is empty: no voxel passes the rule in enough subjects")
    return keep.reshape(grid, order="F")


def check_mask_usable(mask_columns_flat: np.ndarray, moments: dict[str, SubjectMoments],
                      grid: tuple[int, int, int], mask_kind: str, indexed: bool) -> None:
    """Inside a given mask every voxel must be finite and vary in every subject.

    ``indexed``: moments were read on ``mask_columns_flat`` only (a mask file), rather
    than on the whole grid.
    """
    for subject, m in moments.items():
        bad_nonfinite = m.nonfinite if indexed else m.nonfinite[mask_columns_flat]
        problems = [(bad_nonfinite, "hold NaN/inf values")]
        if m.has_training_trs:
            std = m.std if indexed else m.std[mask_columns_flat]
            problems.append((std == 0, "have zero variance over the training TRs"))
        for bad, what in problems:
            if bad.any():
                first = _ijk(mask_columns_flat[np.flatnonzero(bad)[0]], grid)
                raise InputDataError(
                    f"{subject}: {int(bad.sum())} voxels inside the {mask_kind} mask {what} "
                    f"(first at voxel i,j,k = {first}); they cannot be z-scored. Use a mask that "
                    "excludes them, or fmri.mask: auto (voxels that vary in every subject)"
                )

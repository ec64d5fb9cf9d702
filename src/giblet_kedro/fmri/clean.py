"""Confound cleaning of a run, by nilearn's ``signal.clean``, streamed like everything else.

A run is cleaned block by block (:func:`blockwise_operator`): its training TRs, then each
val or test block with the gap before it, each on its own, so that no val or test TR
reaches a training target through detrending, filtering or confound regression.

Detrending, Butterworth or cosine filtering and confound regression are linear in the
voxel time series, with one operator shared by every voxel of a run: ``clean(Y) = L @ Y``
for a ``(n_trs, n_trs)`` matrix ``L``. We obtain ``L`` from nilearn itself, by cleaning the
identity (column ``j`` of ``clean(I)`` is the cleaned unit impulse at TR ``j``), then
apply it block by block as the run is read: ``out += L[:, block] @ Y[block]``. The result
is nilearn's own cleaning to float rounding (tested against ``signal.clean`` on the whole
array), without holding more than one raw block and the cleaned run in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.reader import RunHeader, iter_blocks
from giblet_kedro.spec.schema import CleanSpec

log = logging.getLogger(__name__)


def read_confound_table(path: Path, label: str) -> pd.DataFrame:
    """A confound table: ``.tsv``/``.csv`` with a header row (fMRIPrep: ``n/a`` for missing),
    anything else whitespace-separated numbers without a header (SPM's ``rp_*.txt``),
    whose columns are then named ``0``, ``1``, ..."""
    try:
        if path.suffix.lower() in (".tsv", ".csv"):
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", na_values=["n/a"])
        else:
            table = pd.read_csv(path, sep=r"\s+", header=None, comment="#")
            table.columns = [str(c) for c in range(table.shape[1])]
    except FileNotFoundError:
        raise InputDataError(f"{label}: confound table {path} does not exist") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputDataError(f"{label}: cannot read confound table {path}: {exc}") from None
    if table.empty:
        raise InputDataError(f"{label}: confound table {path} is empty")
    return table


def confound_matrix(table: pd.DataFrame, columns: list[str | int] | None, skip_rows: int | None,
                    n_trs_file: int, crop: tuple[int, int], label: str) -> np.ndarray:
    """The confounds of the crop's TRs, ``(crop[1] - crop[0], n_columns)`` float64.

    Row ``skip_rows + t`` of the table belongs to file TR ``t``; without ``skip_rows`` the
    table must have exactly one row per volume of the file. A missing value (fMRIPrep
    writes ``n/a`` in the first row of derivative columns) becomes the column's mean.
    """
    names = [str(c) for c in (columns if columns is not None else table.columns)]
    missing = [c for c in names if c not in table.columns.astype(str)]
    if missing:
        raise InputDataError(
            f"{label}: confound columns {missing} are not in the table; its columns are {list(table.columns)}"
        )
    frame = table.set_axis(table.columns.astype(str), axis=1)[names]
    non_numeric = [c for c in names if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise InputDataError(f"{label}: confound columns {non_numeric} are not numeric")
    n_rows = len(frame)
    if skip_rows is None:
        if n_rows != n_trs_file:
            raise InputDataError(
                f"{label}: the confound table has {n_rows} rows but the run has {n_trs_file} volumes. If the "
                f"first {n_rows - n_trs_file} volumes were discarded from the brain data only, give "
                f"fmri.clean.confounds.skip_rows: {n_rows - n_trs_file}; otherwise the table belongs to another run"
                if n_rows > n_trs_file else
                f"{label}: the confound table has {n_rows} rows but the run has {n_trs_file} volumes; "
                "it needs one row per volume"
            )
        skip_rows = 0
    elif n_rows - skip_rows != n_trs_file:
        raise InputDataError(
            f"{label}: the confound table has {n_rows} rows; skipping {skip_rows} leaves {n_rows - skip_rows} "
            f"but the run has {n_trs_file} volumes (accepted: skip_rows = {n_rows - n_trs_file})"
        )
    values = frame.to_numpy(dtype=np.float64)[skip_rows + crop[0]: skip_rows + crop[1]]
    if np.isinf(values).any():
        raise InputDataError(f"{label}: the confound table holds infinite values")
    nan_columns = np.isnan(values).any(axis=0)
    if nan_columns.any():
        log.info("%s: missing confound values in %s replaced by the column mean", label,
                 [names[i] for i in np.flatnonzero(nan_columns)])
        means = np.nanmean(np.where(np.isnan(values), np.nan, values), axis=0)
        values = np.where(np.isnan(values), np.nan_to_num(means)[None, :], values)
    return values


def deterministic_blas():
    """Single-threaded BLAS for the block it wraps.

    OpenBLAS's matrix products round differently with the number of threads (float32
    cleaned values moved by up to 1.5e-5 between 1 and 2 threads, measured): the
    cleaned data would depend on the machine's core count and on the runner. One thread
    makes every runner (sequential, ParallelRunner, Dask workers) write the same bits;
    the fMRI stage's parallelism comes from its partitions instead."""
    return threadpool_limits(limits=1, user_api="blas")


def cleaning_operator(n_trs: int, tr: float, clean: CleanSpec, confounds: np.ndarray | None,
                      censored: np.ndarray | None = None) -> np.ndarray:
    """See :func:`_cleaning_operator` (computed with :func:`deterministic_blas`)."""
    with deterministic_blas():
        return _cleaning_operator(n_trs, tr, clean, confounds, censored)


def _cleaning_operator(n_trs: int, tr: float, clean: CleanSpec, confounds: np.ndarray | None,
                       censored: np.ndarray | None = None) -> np.ndarray:
    """``L`` such that nilearn's ``signal.clean(Y, ...) == L @ Y`` for any ``(n_trs, V)`` Y.

    Parameters
    ----------
    n_trs : TRs of the cropped run.
    tr : seconds per TR.
    clean : detrend, filter and band settings.
    confounds : (n_trs, k) regressors for these TRs, or None.
    censored : indices (in ``[0, n_trs)``) of censored volumes, or None. nilearn cleans
        with ``sample_mask`` = the other TRs: censored volumes are left out (interpolated
        over for the Butterworth filter), so their columns of ``L`` are zero; their rows
        are zero too (nilearn returns no value for them).

    Returns
    -------
    (n_trs, n_trs) float64.
    """
    if censored is None or not len(censored):
        return _nilearn_operator(np.eye(n_trs), tr, clean, confounds, None)
    kept = np.setdiff1d(np.arange(n_trs), censored)
    operator = np.zeros((n_trs, n_trs))
    if kept.size == 0:
        return operator
    if not _butterworth(clean):
        operator[kept] = _nilearn_operator(np.eye(n_trs), tr, clean, confounds, kept)
        return operator
    # Butterworth: nilearn interpolates censored volumes by a cubic spline through the
    # kept ones before filtering, and drops those before the first or after the last kept
    # volume. nilearn 0.14 picks the rows to replace with ``~sample_mask`` on an integer
    # index (negative indices: other rows), so a censored volume can leak into the
    # result. We give it the span between the first and last kept volumes already
    # interpolated: its own interpolation then changes nothing.
    start, stop = int(kept[0]), int(kept[-1]) + 1
    inside = kept - start
    interpolate = spline_interpolation(stop - start, inside)
    part = None if confounds is None else interpolate @ confounds[start:stop]
    operator[kept, start:stop] = _nilearn_operator(interpolate, tr, clean, part, inside)
    return operator


def spline_interpolation(n_trs: int, kept: np.ndarray) -> np.ndarray:
    """``P`` (n_trs, n_trs) such that ``P @ Y`` keeps the ``kept`` rows of ``Y`` and
    replaces every other row by the not-a-knot cubic spline through the kept ones
    (scipy's ``CubicSpline``, as nilearn interpolates censored volumes). ``kept`` must
    include the first and last rows (no extrapolation). Columns of censored rows are 0."""
    from scipy.interpolate import CubicSpline

    if kept.size == 1:
        return np.eye(n_trs)
    basis = np.eye(n_trs)[kept]  # (n_kept, n_trs): each kept volume as an impulse
    return CubicSpline(kept.astype(np.float64), basis)(np.arange(n_trs, dtype=np.float64))


def _butterworth(clean: CleanSpec) -> bool:
    return bool(clean.high_pass_hz or clean.low_pass_hz) and clean.filter == "butterworth"


def _nilearn_operator(signals: np.ndarray, tr: float, clean: CleanSpec, confounds: np.ndarray | None,
                      kept: np.ndarray | None) -> np.ndarray:
    """nilearn's cleaning of ``signals`` (the identity, or an interpolation matrix):
    ``(n_trs, n_trs)``, or ``(len(kept), n_trs)`` with a ``sample_mask``."""
    n_trs = signals.shape[0]
    from nilearn import signal

    use_filter = clean.filter if (clean.high_pass_hz or clean.low_pass_hz) else False
    nyquist = 0.5 / tr
    for name, value in (("high_pass_hz", clean.high_pass_hz), ("low_pass_hz", clean.low_pass_hz)):
        if value is not None and value >= nyquist:
            raise InputDataError(
                f"fmri.clean.{name} = {value:g} Hz is at or above the Nyquist frequency of TR {tr:g} s "
                f"({nyquist:g} Hz); accepted: below {nyquist:g}"
            )
    settings = {"detrend": clean.detrend, "standardize": None, "confounds": confounds,
                "standardize_confounds": clean.confounds.standardize if clean.confounds else True,
                "filter": use_filter, "low_pass": clean.low_pass_hz, "high_pass": clean.high_pass_hz, "t_r": tr,
                "sample_mask": kept}
    # What the filter sees: every TR given (interpolated ones included), or the kept ones.
    span = n_trs if kept is None or use_filter == "butterworth" else kept.size
    try:
        try:
            return signal.clean(signals, **settings)
        except ValueError as exc:
            if use_filter != "butterworth" or "padlen" not in str(exc):
                raise
            # A block shorter than the Butterworth filter's default padding (a val or
            # test block cleaned on its own): pad it by its own length instead.
            log.warning("fmri.clean: a block of %d TRs is shorter than the Butterworth filter's padding; it is "
                        "padded by %d TRs instead", span, span - 1)
            return signal.clean(signals, **settings, butterworth__padlen=span - 1)
    except ValueError as exc:
        raise InputDataError(f"fmri.clean: nilearn cannot clean a run of {n_trs} TRs with these settings: {exc}") \
            from None


def blockwise_operator(blocks: list[slice], tr: float, clean: CleanSpec, confounds: np.ndarray | None,
                       censored: np.ndarray | None = None) -> np.ndarray:
    """The cleaning operator of a run cut into ``blocks`` (crop-relative TR slices that
    tile the run): nilearn's cleaning of each block on its own, with that block's own
    confound rows, as one block-diagonal ``(n_trs, n_trs)`` matrix.

    A cleaned training TR then depends on training TRs only: detrending, filtering and
    confound regression never carry val or test TRs into a training target (or test
    TRs into a val one). See :func:`giblet_kedro.fmri.split.blocks`. ``censored``:
    crop-relative censored volumes (see :func:`cleaning_operator`).
    """
    n_trs = blocks[-1].stop
    operator = np.zeros((n_trs, n_trs))
    censored = np.zeros(0, dtype=np.int64) if censored is None else np.asarray(censored, dtype=np.int64)
    for rows in blocks:
        part = None if confounds is None else confounds[rows]
        inside = censored[(censored >= rows.start) & (censored < rows.stop)] - rows.start
        try:
            operator[rows, rows] = cleaning_operator(rows.stop - rows.start, tr, clean, part, inside)
        except InputDataError as exc:
            raise InputDataError(f"{exc} (the block of TRs {rows.start}..{rows.stop - 1} of the crop, cleaned on its "
                                 "own so that no val or test TR reaches a training one)") from None
    return operator


def clean_run(header: RunHeader, crop: tuple[int, int], columns: np.ndarray | None, operator: np.ndarray,
              block_trs: int, on_block: Callable[[slice, np.ndarray], None] | None = None,
              on_raw: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """The cleaned crop of one run, ``(crop[1] - crop[0], n_columns)`` float32.

    Reads the run once, block by block, accumulating ``operator[:, block] @ block``;
    ``on_block(rows, raw_block)`` sees each raw block first (crop-relative ``rows``);
    ``on_raw`` as in :func:`~giblet_kedro.fmri.reader.iter_blocks`.
    """
    start, stop = crop
    n_columns = header.n_grid_voxels if columns is None else len(columns)
    cleaned = np.zeros((stop - start, n_columns), dtype=np.float32)
    op32 = operator.astype(np.float32)
    for t0, block in iter_blocks(header, start, stop, block_trs, columns, on_raw):
        rows = slice(t0 - start, t0 - start + block.shape[0])
        if on_block is not None:
            on_block(rows, block)
        # NaN stays in its own column (0 * NaN is NaN): non-finite voxels remain flagged.
        with deterministic_blas():
            cleaned += op32[:, rows] @ block
    return cleaned

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


def cleaning_operator(n_trs: int, tr: float, clean: CleanSpec, confounds: np.ndarray | None) -> np.ndarray:
    """``L`` such that nilearn's ``signal.clean(Y, ...) == L @ Y`` for any ``(n_trs, V)`` Y.

    Parameters
    ----------
    n_trs : TRs of the cropped run.
    tr : seconds per TR.
    clean : detrend, filter and band settings.
    confounds : (n_trs, k) regressors for these TRs, or None.

    Returns
    -------
    (n_trs, n_trs) float64.
    """
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
                "filter": use_filter, "low_pass": clean.low_pass_hz, "high_pass": clean.high_pass_hz, "t_r": tr}
    try:
        try:
            return signal.clean(np.eye(n_trs), **settings)
        except ValueError as exc:
            if use_filter != "butterworth" or "padlen" not in str(exc):
                raise
            # A block shorter than the Butterworth filter's default padding (a val or
            # test block cleaned on its own): pad it by its own length instead.
            log.warning("fmri.clean: a block of %d TRs is shorter than the Butterworth filter's padding; it is "
                        "padded by %d TRs instead", n_trs, n_trs - 1)
            return signal.clean(np.eye(n_trs), **settings, butterworth__padlen=n_trs - 1)
    except ValueError as exc:
        raise InputDataError(f"fmri.clean: nilearn cannot clean a run of {n_trs} TRs with these settings: {exc}") \
            from None


def blockwise_operator(blocks: list[slice], tr: float, clean: CleanSpec, confounds: np.ndarray | None) -> np.ndarray:
    """The cleaning operator of a run cut into ``blocks`` (crop-relative TR slices that
    tile the run): nilearn's cleaning of each block on its own, with that block's own
    confound rows, as one block-diagonal ``(n_trs, n_trs)`` matrix.

    A cleaned training TR then depends on training TRs only: detrending, filtering and
    confound regression never carry val or test TRs into a training target (or test
    TRs into a val one). See :func:`giblet_kedro.fmri.split.blocks`.
    """
    n_trs = blocks[-1].stop
    operator = np.zeros((n_trs, n_trs))
    for rows in blocks:
        part = None if confounds is None else confounds[rows]
        try:
            operator[rows, rows] = cleaning_operator(rows.stop - rows.start, tr, clean, part)
        except InputDataError as exc:
            raise InputDataError(f"{exc} (the block of TRs {rows.start}..{rows.stop - 1} of the crop, cleaned on its "
                                 "own so that no val or test TR reaches a training one)") from None
    return operator


def clean_run(header: RunHeader, crop: tuple[int, int], columns: np.ndarray | None, operator: np.ndarray,
              block_trs: int, on_block: Callable[[slice, np.ndarray], None] | None = None) -> np.ndarray:
    """The cleaned crop of one run, ``(crop[1] - crop[0], n_columns)`` float32.

    Reads the run once, block by block, accumulating ``operator[:, block] @ block``;
    ``on_block(rows, raw_block)`` sees each raw block first (crop-relative ``rows``).
    """
    start, stop = crop
    n_columns = header.n_grid_voxels if columns is None else len(columns)
    cleaned = np.zeros((stop - start, n_columns), dtype=np.float32)
    op32 = operator.astype(np.float32)
    for t0, block in iter_blocks(header, start, stop, block_trs, columns):
        rows = slice(t0 - start, t0 - start + block.shape[0])
        if on_block is not None:
            on_block(rows, block)
        # NaN stays in its own column (0 * NaN is NaN): non-finite voxels remain flagged.
        cleaned += op32[:, rows] @ block
    return cleaned

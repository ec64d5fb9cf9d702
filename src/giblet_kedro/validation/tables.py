"""Pandera schemas for the fMRI stage's tables, used as catalog ``validator:``s."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from giblet_kedro.fmri.split import GAP, LABELS, SPLITS

ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class SubjectTable(pa.DataFrameModel):
    """One row per subject and run: its file and what its header says."""

    subject_id: Series[str] = pa.Field(str_matches=ID)
    run: Series[str] = pa.Field(str_matches=ID)
    path: Series[str]
    nx: Series[int] = pa.Field(gt=0)
    ny: Series[int] = pa.Field(gt=0)
    nz: Series[int] = pa.Field(gt=0)
    n_trs_file: Series[int] = pa.Field(ge=2)
    tr_s: Series[float] = pa.Field(gt=0, lt=100)
    dtype: Series[str]
    scl_slope: Series[float]
    scl_inter: Series[float]
    crop_start: Series[int] = pa.Field(ge=0)
    crop_stop: Series[int] = pa.Field(gt=0)

    class Config:
        strict = True
        coerce = True

    @pa.dataframe_check(error="each (subject_id, run) must appear once")
    def one_row_per_run(cls, df: pd.DataFrame) -> bool:
        return not df.duplicated(["subject_id", "run"]).any()

    @pa.dataframe_check(error="every run must share one grid, and each run one TR crop across subjects")
    def one_grid_one_crop(cls, df: pd.DataFrame) -> bool:
        one_grid = bool(df[["nx", "ny", "nz"]].nunique().le(1).all())
        return one_grid and bool(df.groupby("run")[["crop_start", "crop_stop"]].nunique().le(1).all().all())

    @pa.dataframe_check(error="crop must lie inside every run: crop_start < crop_stop <= n_trs_file")
    def crop_inside_runs(cls, df: pd.DataFrame) -> pd.Series:
        return (df["crop_start"] < df["crop_stop"]) & (df["crop_stop"] <= df["n_trs_file"])


class SplitTable(pa.DataFrameModel):
    """One row per TR of the concatenated, cropped runs, in time order."""

    tr: Series[int] = pa.Field(ge=0)
    run: Series[str] = pa.Field(str_matches=ID)
    run_tr: Series[int] = pa.Field(ge=0)
    file_tr: Series[int] = pa.Field(ge=0)
    onset_s: Series[float] = pa.Field(ge=0)
    split: Series[str] = pa.Field(isin=list(LABELS))

    class Config:
        strict = True
        coerce = True


def validate_split_table(table: pd.DataFrame) -> pd.DataFrame:
    """Schema, plus: TRs numbered 0..n-1; each run one contiguous stretch of consecutive
    file TRs, its splits in contiguous train, val, test order, gaps only between blocks."""
    table = SplitTable.validate(table)
    if not np.array_equal(table["tr"].to_numpy(), np.arange(len(table))):
        raise ValueError("split table: 'tr' must number the TRs 0..n-1 in order")
    runs = table["run"].to_numpy()
    starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]])
    if len(set(runs[starts])) != len(starts):
        raise ValueError("split table: each run must be one contiguous stretch of rows")
    for run, part in table.groupby("run", sort=False):
        if not np.array_equal(part["run_tr"].to_numpy(), np.arange(len(part))):
            raise ValueError(f"split table: run {run!r}: 'run_tr' must number its TRs 0..n-1")
        if not (np.diff(part["file_tr"].to_numpy()) == 1).all():
            raise ValueError(f"split table: run {run!r}: 'file_tr' must be consecutive file TRs")
        labels = part["split"].astype(str).to_numpy()
        order = pd.Series(labels[labels != GAP]).map({name: i for i, name in enumerate(SPLITS)}).to_numpy()
        if (np.diff(order) < 0).any():
            raise ValueError(f"split table: run {run!r}: splits must be contiguous blocks in the order train, val, test")
        if labels[0] == GAP or labels[-1] == GAP:
            raise ValueError(f"split table: run {run!r}: gap TRs lie between two blocks, never at a run's ends")
    if not (table["split"] == "train").any():
        raise ValueError("split table: no training TRs")
    return table


def build_schemas() -> None:
    """Build the table schemas in this process now. The first build imports about a
    second of modules (pandera's typing imports dask when it is installed); built in the
    process that runs the pipeline, before ParallelRunner forks its workers, they are
    inherited instead of imported again by every worker."""
    SubjectTable.to_schema()
    SplitTable.to_schema()

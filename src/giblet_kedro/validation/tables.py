"""Pandera schemas for the fMRI stage's tables, used as catalog ``validator:``s."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from giblet_kedro.fmri.split import SPLITS


class SubjectTable(pa.DataFrameModel):
    """One row per subject: its file and what its header says."""

    subject_id: Series[str] = pa.Field(unique=True, str_matches=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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

    @pa.dataframe_check(error="every subject must share one grid and one TR crop")
    def one_grid_one_crop(cls, df: pd.DataFrame) -> bool:
        return bool(df[["nx", "ny", "nz", "crop_start", "crop_stop"]].nunique().le(1).all())

    @pa.dataframe_check(error="crop must lie inside every run: crop_start < crop_stop <= n_trs_file")
    def crop_inside_runs(cls, df: pd.DataFrame) -> pd.Series:
        return (df["crop_start"] < df["crop_stop"]) & (df["crop_stop"] <= df["n_trs_file"])


class SplitTable(pa.DataFrameModel):
    """One row per TR of the crop, in time order."""

    tr: Series[int] = pa.Field(ge=0)
    file_tr: Series[int] = pa.Field(ge=0)
    onset_s: Series[float] = pa.Field(ge=0)
    split: Series[str] = pa.Field(isin=list(SPLITS))

    class Config:
        strict = True
        coerce = True


def validate_split_table(table: pd.DataFrame) -> pd.DataFrame:
    """Schema, plus: TRs numbered 0..n-1 and splits in contiguous train, val, test order."""
    table = SplitTable.validate(table)
    if not np.array_equal(table["tr"].to_numpy(), np.arange(len(table))):
        raise ValueError("split table: 'tr' must number the TRs 0..n-1 in order")
    if not (np.diff(table["file_tr"].to_numpy()) == 1).all():
        raise ValueError("split table: 'file_tr' must be consecutive file TRs")
    order = table["split"].map({name: i for i, name in enumerate(SPLITS)}).to_numpy()
    if (np.diff(order) < 0).any():
        raise ValueError("split table: splits must be contiguous blocks in the order train, val, test")
    if not (table["split"] == "train").any():
        raise ValueError("split table: no training TRs")
    return table

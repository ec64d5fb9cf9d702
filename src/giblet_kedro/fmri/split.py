"""Contiguous train / val / test blocks of TRs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from giblet_kedro.errors import InputDataError

SPLITS = ("train", "val", "test")


def split_sizes(n_trs: int, val: float, test: float, min_train: int = 3) -> tuple[int, int, int]:
    """TRs in (train, val, test) for a run of ``n_trs``; val and test round to whole TRs."""
    n_val = int(round(val * n_trs))
    n_test = int(round(test * n_trs))
    n_train = n_trs - n_val - n_test
    if n_train < min_train:
        raise InputDataError(
            f"fmri.split val={val:g}, test={test:g} of {n_trs} TRs leaves {n_train} training TRs; "
            f"at least {min_train} are needed to estimate each voxel's mean and std"
        )
    return n_train, n_val, n_test


def split_table(start: int, stop: int, tr_s: float, val: float, test: float) -> pd.DataFrame:
    """One row per TR of the crop ``[start, stop)``.

    Columns: ``tr`` (index within the crop), ``file_tr`` (index in the file),
    ``onset_s`` (seconds from the start of the crop) and ``split``.
    """
    n = stop - start
    n_train, n_val, n_test = split_sizes(n, val, test)
    labels = np.repeat(np.array(SPLITS), [n_train, n_val, n_test])
    index = np.arange(n)
    return pd.DataFrame({
        "tr": index,
        "file_tr": index + start,
        "onset_s": index * float(tr_s),
        "split": pd.Categorical(labels, categories=list(SPLITS)),
    })


def train_rows(table: pd.DataFrame) -> np.ndarray:
    """Crop-relative indices of the training TRs."""
    return table.loc[table["split"] == "train", "tr"].to_numpy(dtype=np.int64)

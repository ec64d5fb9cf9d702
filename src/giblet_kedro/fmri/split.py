"""Contiguous train / val / test blocks of TRs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from giblet_kedro.errors import InputDataError

SPLITS = ("train", "val", "test")


def split_sizes(n_trs: int, val: float, test: float, min_train: int = 3, what: str = "") -> tuple[int, int, int]:
    """TRs in (train, val, test) for a run of ``n_trs``; val and test round to whole TRs."""
    n_val = int(round(val * n_trs))
    n_test = int(round(test * n_trs))
    n_train = n_trs - n_val - n_test
    if n_train < min_train:
        raise InputDataError(
            f"fmri.split val={val:g}, test={test:g} of {n_trs} TRs{what} leaves {n_train} training TRs; "
            f"at least {min_train} are needed to estimate each voxel's mean and std"
        )
    return n_train, n_val, n_test


def split_table(start: int, stop: int, tr_s: float, val: float, test: float, run: str = "1",
                what: str = "") -> pd.DataFrame:
    """One row per TR of one run's crop ``[start, stop)``, in contiguous blocks.

    Columns: ``tr`` (index within the crop), ``run``, ``run_tr`` (the same index),
    ``file_tr`` (index in the file), ``onset_s`` (seconds from the start of the crop)
    and ``split``.
    """
    n_train, n_val, n_test = split_sizes(stop - start, val, test, what=what)
    return _table(start, stop, tr_s, run, np.repeat(np.array(SPLITS), [n_train, n_val, n_test]))


def whole_run_table(start: int, stop: int, tr_s: float, run: str, split: str) -> pd.DataFrame:
    """Like :func:`split_table`, every TR of the run in ``split``."""
    return _table(start, stop, tr_s, run, np.full(stop - start, split))


def _table(start: int, stop: int, tr_s: float, run: str, labels: np.ndarray) -> pd.DataFrame:
    index = np.arange(stop - start)
    return pd.DataFrame({
        "tr": index,
        "run": run,
        "run_tr": index,
        "file_tr": index + start,
        "onset_s": index * float(tr_s),
        "split": pd.Categorical(labels, categories=list(SPLITS)),
    })


def concatenate_runs(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Runs one after the other: ``tr`` becomes the row of the concatenated data."""
    table = pd.concat(tables, ignore_index=True)
    table["tr"] = np.arange(len(table))
    table["split"] = pd.Categorical(table["split"].astype(str), categories=list(SPLITS))
    return table


def train_rows(table: pd.DataFrame) -> np.ndarray:
    """Rows of the (concatenated) data that are training TRs."""
    return table.loc[table["split"] == "train", "tr"].to_numpy(dtype=np.int64)


def run_crops(table: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Run id -> its crop ``(start, stop)`` in file TRs, in concatenation order."""
    crops = {}
    for run, part in table.groupby("run", sort=False):
        file_trs = part["file_tr"].to_numpy()
        crops[str(run)] = (int(file_trs[0]), int(file_trs[-1]) + 1)
    return crops


def stats_rows(table: pd.DataFrame, run: str) -> tuple[np.ndarray, str]:
    """Crop-relative TRs of ``run`` that its statistics come from, and which ones.

    The run's training TRs; for a run that ``split.by: run`` holds out whole, all its TRs
    (its own baseline and scale: a new session's cannot be learned from other runs).
    """
    part = table[table["run"].astype(str) == run]
    train = part.loc[part["split"] == "train", "run_tr"].to_numpy(dtype=np.int64)
    if train.size:
        return train, "train"
    return part["run_tr"].to_numpy(dtype=np.int64), "all"

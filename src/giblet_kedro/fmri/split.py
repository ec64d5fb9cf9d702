"""Contiguous train / val / test blocks of TRs, with unused gaps between them."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from giblet_kedro.errors import InputDataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
GAP = "gap"  # TRs between two blocks of a run: in no split, never read by any stage
LABELS = ("train", GAP, "val", "test")


def auto_gap_trs(tr_s: float, gap_seconds: float) -> int:
    """TRs that cover ``gap_seconds`` (15 s: 10 TRs at 1.5 s)."""
    return int(math.ceil(gap_seconds / tr_s - 1e-9))


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


def fit_gap(n_train: int, n_gaps: int, gap: int, explicit: bool, min_train: int = 3, what: str = "") -> int:
    """The gap length a run can hold: ``gap`` when the training block keeps at least
    ``min_train`` TRs; else an explicit gap is an error, an automatic one is shortened
    (with a warning) so that a valid spec never becomes invalid through a default."""
    if n_gaps == 0 or n_train - n_gaps * gap >= min_train:
        return gap
    if explicit:
        raise InputDataError(
            f"fmri.split.gap_trs = {gap}: {n_gaps} gap(s) of {gap} TRs{what} leave {n_train - n_gaps * gap} "
            f"training TRs; at least {min_train} are needed (accepted: gap_trs <= {(n_train - min_train) // n_gaps})"
        )
    fitted = max((n_train - min_train) // n_gaps, 0)
    log.warning("fmri.split.gap_trs: auto: the run%s is too short for gaps of %d TRs between its blocks; "
                "using %d. Validation and test TRs within ~15 s of training TRs share their haemodynamic "
                "response: give the run more TRs, or set gap_trs to accept this explicitly", what, gap, fitted)
    return fitted


def split_table(start: int, stop: int, tr_s: float, val: float, test: float, run: str = "1",
                what: str = "", gap: int = 0, explicit_gap: bool = False) -> pd.DataFrame:
    """One row per TR of one run's crop ``[start, stop)``, in contiguous blocks:
    train | gap | val | gap | test (a gap only between two blocks that exist).

    Columns: ``tr`` (index within the crop), ``run``, ``run_tr`` (the same index),
    ``file_tr`` (index in the file), ``onset_s`` (seconds from the start of the crop)
    and ``split`` (``train``, ``gap``, ``val`` or ``test``).
    """
    n_train, n_val, n_test = split_sizes(stop - start, val, test, what=what)
    n_gaps = int(n_val > 0) + int(n_test > 0)
    gap = fit_gap(n_train, n_gaps, gap, explicit_gap, what=what)
    labels = ["train"] * (n_train - n_gaps * gap)
    for name, size in (("val", n_val), ("test", n_test)):
        if size:
            labels += [GAP] * gap + [name] * size
    return _table(start, stop, tr_s, run, np.array(labels))


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
        "split": pd.Categorical(labels, categories=list(LABELS)),
    })


def concatenate_runs(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Runs one after the other: ``tr`` becomes the row of the concatenated data."""
    table = pd.concat(tables, ignore_index=True)
    table["tr"] = np.arange(len(table))
    table["split"] = pd.Categorical(table["split"].astype(str), categories=list(LABELS))
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


def stats_rows(table: pd.DataFrame, run: str) -> np.ndarray:
    """Crop-relative training TRs of ``run`` (empty for a run held out whole)."""
    part = table[table["run"].astype(str) == run]
    return part.loc[part["split"] == "train", "run_tr"].to_numpy(dtype=np.int64)


def blocks(table: pd.DataFrame, run: str) -> list[slice]:
    """Crop-relative TRs of ``run`` cut where no cleaning may reach across: the training
    block, then each val or test block together with the gap before it. Cleaning each on
    its own (detrending, filtering, confound regression) keeps val and test TRs out of
    every training row, and test TRs out of val rows."""
    labels = table.loc[table["run"].astype(str) == run, "split"].astype(str).to_numpy()
    starts = [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1] and labels[i - 1] != GAP]
    ends = starts[1:] + [len(labels)]
    return [slice(a, b) for a, b in zip(starts, ends, strict=True)]

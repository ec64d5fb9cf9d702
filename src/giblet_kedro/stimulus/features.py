"""Features the lab already has, on the TR grid: annotation columns, precomputed arrays,
TextGrid word rate.

Every function returns ``(values, valid, names)``: values ``(n_trs, n_features)``
float32 (0 where invalid), valid ``(n_trs,)`` bool, and one name per feature column
(``"scene:Music Presence=Yes"``). A TR the source does not cover is invalid, never
forward-filled. Times are movie seconds; TR ``i`` is the window
``[grid.window_starts()[i], + tr)``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from giblet_kedro.errors import InputDataError
from giblet_kedro.stimulus.aligned import TrGrid

log = logging.getLogger(__name__)
Aligned = tuple[np.ndarray, np.ndarray, list[str]]


# ------------------------------------------------------------------ annotation tables
def read_table(path: Path, label: str) -> pd.DataFrame:
    """An xlsx/xls/csv/tsv/parquet table (``.txt``: comma-separated, as ``.csv``); column
    names stripped of surrounding spaces. ``label`` names the spec key in errors."""
    if not path.is_file():
        raise InputDataError(f"{label}: file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xlsm", ".xls"):
            table = pd.read_excel(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        elif suffix == ".parquet":
            table = pd.read_parquet(path)
        else:
            raise InputDataError(f"{label}: {path} has extension {suffix!r}; accepted: .xlsx, .xls, .csv, .tsv, "
                                 ".parquet")
    except InputDataError:
        raise
    except Exception as exc:
        raise InputDataError(f"{label}: cannot read {path} as a table: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _column(table: pd.DataFrame, name: str, path: Path, label: str) -> str:
    wanted = name.strip()
    if wanted not in table.columns:
        raise InputDataError(f"{label}: {path} has no column {wanted!r}; its columns are {list(table.columns)}")
    return wanted


def segment_times(table: pd.DataFrame, start: str, end: str, path: Path, label: str,
                  run_onsets_s: list[float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(start_s, end_s, keep)`` in movie seconds for the rows with both times.

    Rows are numbered as in a spreadsheet (row 2 is the first data row). A row that ends
    before it starts, or a start earlier than the previous row's (times out of order)
    without ``run_onsets_s``, is an error naming the row.
    """
    starts = pd.to_numeric(table[start], errors="coerce").to_numpy(dtype=float)
    ends = pd.to_numeric(table[end], errors="coerce").to_numpy(dtype=float)
    rows = np.arange(len(table)) + 2
    keep = np.isfinite(starts) & np.isfinite(ends)
    reversed_rows = keep & (ends < starts)
    if reversed_rows.any():
        raise InputDataError(f"{label}: {path} rows {rows[reversed_rows][:10].tolist()} end before they start "
                             f"({end!r} < {start!r})")
    timed = np.flatnonzero(keep)
    backwards = timed[1:][np.diff(starts[timed]) < -1e-6]
    run = np.zeros(len(table), dtype=int)
    if backwards.size:
        if run_onsets_s is None:
            k = int(backwards[0])
            previous = timed[timed < k][-1]
            raise InputDataError(
                f"{label}: {path} times out of order at row {rows[k]}: it starts at {starts[k]:g} s, before row "
                f"{rows[previous]} ({starts[previous]:g} s). Sort the table, or, if it holds several runs whose "
                "times restart at 0, give run_onsets_s (the movie time of each run's first row)")
        for k in backwards:
            run[k:] += 1
        if len(run_onsets_s) <= run.max():
            raise InputDataError(f"{label}: {path} has {run.max() + 1} runs (times restart at 0) but run_onsets_s "
                                 f"gives {len(run_onsets_s)} onsets")
    if run_onsets_s is not None:
        offsets = np.asarray(run_onsets_s, dtype=float)[run]
        starts, ends = starts + offsets, ends + offsets
    return starts, ends, keep


def overlap_weights(starts: np.ndarray, ends: np.ndarray, grid: TrGrid) -> np.ndarray:
    """(n_trs, n_segments): seconds of each TR window each segment covers."""
    t0 = grid.window_starts()[:, None]
    return np.clip(np.minimum(ends[None, :], t0 + grid.tr) - np.maximum(starts[None, :], t0), 0.0, None)


def table_features(path: Path, start: str, end: str, columns: dict[str, str], grid: TrGrid, label: str,
                   run_onsets_s: list[float] | None = None) -> Aligned:
    """Annotation columns on the TR grid: the time-weighted mean over the segments
    overlapping each TR (numeric), or the share of the TR each category covers (one-hot).
    An empty cell is left out of its column's mean; a TR with no covered column value is
    invalid."""
    table = read_table(path, label)
    start, end = _column(table, start, path, label), _column(table, end, path, label)
    starts, ends, timed = segment_times(table, start, end, path, label, run_onsets_s)
    blocks, names = [], []
    for given, kind in columns.items():
        name = _column(table, given, path, label)
        raw = table[name]
        empty = raw.isna() | raw.astype(str).str.strip().eq("")
        if kind == "numeric":
            numbers = pd.to_numeric(raw, errors="coerce")
            bad = ~empty & numbers.isna()
            if bad.any():
                k = int(np.flatnonzero(bad.to_numpy())[0])
                raise InputDataError(f"{label}: {path} column {name!r} is numeric but row {k + 2} holds "
                                     f"{raw.iloc[k]!r}; give a number or leave the cell empty, or declare the "
                                     "column categorical")
            blocks.append(numbers.to_numpy(dtype=float)[:, None])
            names.append(name)
        else:
            text = raw.astype(str).str.strip()
            levels = sorted(set(text[~empty]))
            blocks.append(np.stack([np.where(empty, np.nan, (text == level).astype(float)) for level in levels], 1)
                          if levels else np.zeros((len(table), 0)))
            names += [f"{name}={level}" for level in levels]
    matrix = np.concatenate(blocks, axis=1)  # (n_rows, n_features), NaN = empty cell
    weights = overlap_weights(starts[timed], ends[timed], grid)  # (n_trs, n_timed)
    matrix = matrix[timed]
    present = np.isfinite(matrix)
    covered = weights @ present.astype(float)  # (n_trs, n_features) seconds of known value
    summed = weights @ np.where(present, matrix, 0.0)
    values = np.divide(summed, covered, out=np.zeros_like(summed), where=covered > 0)
    valid = (covered > 0).all(axis=1) if matrix.shape[1] else np.zeros(grid.n_trs, bool)
    return np.where(valid[:, None], values, 0.0).astype(np.float32), valid, names


# ------------------------------------------------------------------- arrays
def read_array(path: Path, label: str, key: str | None, timestamps: str | None) -> tuple[np.ndarray, np.ndarray | None,
                                                                                         list[str]]:
    """``(samples (n, d) float, times (n,) or None, column names)`` from npy/npz/parquet/tsv."""
    if not path.is_file():
        raise InputDataError(f"{label}: file not found: {path}")
    suffix = path.suffix.lower()
    times = None
    if suffix == ".npy":
        if timestamps is not None:
            raise InputDataError(f"{label}: {path} is a .npy array: it has no timestamps; give rate_hz, or store "
                                 "the times beside the features in an .npz")
        values = _load_npy(path, label)
        names = None
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = [k for k in archive.files if k != timestamps]
                chosen = key or (keys[0] if len(keys) == 1 else None)
                if chosen is None or chosen not in archive.files:
                    raise InputDataError(f"{label}: {path}: say which array holds the features (key: ...); it "
                                         f"holds {archive.files}")
                values = np.asarray(archive[chosen])
                if timestamps is not None:
                    if timestamps not in archive.files:
                        raise InputDataError(f"{label}: {path} has no array {timestamps!r} for timestamps; it holds "
                                             f"{archive.files}")
                    times = np.asarray(archive[timestamps], dtype=float)
        except InputDataError:
            raise
        except Exception as exc:
            raise InputDataError(f"{label}: cannot read {path} as an npz archive: {exc}") from None
        names = None
    elif suffix in (".parquet", ".tsv", ".csv", ".txt"):
        table = read_table(path, label)
        if timestamps is not None:
            times = pd.to_numeric(table[_column(table, timestamps, path, label)], errors="coerce").to_numpy(float)
            table = table.drop(columns=[timestamps.strip()])
        numeric = table.select_dtypes("number")
        if numeric.shape[1] == 0:
            raise InputDataError(f"{label}: {path} has no numeric column; its columns are {list(table.columns)}")
        values, names = numeric.to_numpy(dtype=float), list(numeric.columns)
    else:
        raise InputDataError(f"{label}: {path} has extension {suffix!r}; accepted: .npy, .npz, .parquet, .tsv, .csv")
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise InputDataError(f"{label}: {path} holds a {values.dtype} array of shape {values.shape}; accepted: "
                             "numbers, (n_samples, n_features)")
    return values.astype(float), times, names or [str(i) for i in range(values.shape[1])]


def _load_npy(path: Path, label: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as exc:
        raise InputDataError(f"{label}: cannot read {path} as a .npy array: {exc}") from None


def array_features(values: np.ndarray, times: np.ndarray, grid: TrGrid, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Samples at ``times`` (seconds) on the TR grid: the mean of the samples inside each
    window; a window between samples (a rate below one per TR) takes the linear
    interpolation at its centre; a window outside ``[times[0], times[-1]]`` is invalid.
    Non-finite samples are an error (say which)."""
    if times.shape[0] != values.shape[0]:
        raise InputDataError(f"{label}: {values.shape[0]} samples but {times.shape[0]} timestamps")
    if not np.isfinite(times).all():
        raise InputDataError(f"{label}: timestamp {int(np.flatnonzero(~np.isfinite(times))[0])} is not a number")
    order = np.diff(times)
    if (order <= 0).any():
        k = int(np.flatnonzero(order <= 0)[0]) + 1
        raise InputDataError(f"{label}: times out of order: sample {k} is at {times[k]:g} s, not after sample "
                             f"{k - 1} ({times[k - 1]:g} s); timestamps must increase")
    bad = ~np.isfinite(values)
    if bad.any():
        k, j = np.argwhere(bad)[0]
        raise InputDataError(f"{label}: sample {k}, feature {j} is {values[k, j]}; features must be finite")
    starts = grid.window_starts()
    first = np.searchsorted(times, starts, side="left")
    last = np.searchsorted(times, starts + grid.tr, side="left")
    counts = last - first
    cumulative = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    means = (cumulative[last] - cumulative[first]) / np.maximum(counts, 1)[:, None]
    centres = starts + grid.tr / 2
    inside = (centres >= times[0]) & (centres <= times[-1])
    interpolated = np.stack([np.interp(centres, times, values[:, j]) for j in range(values.shape[1])], axis=1) \
        if values.shape[1] else np.zeros((grid.n_trs, 0))
    out = np.where((counts > 0)[:, None], means, interpolated)
    valid = (counts > 0) | inside
    return np.where(valid[:, None], out, 0.0).astype(np.float32), valid


# ------------------------------------------------------------------- Praat TextGrid
_INTERVAL = re.compile(r'xmin\s*=\s*([-0-9.eE+]+)\s*xmax\s*=\s*([-0-9.eE+]+)\s*text\s*=\s*"((?:[^"]|"")*)"')


def read_textgrid(path: Path, tier: str, label: str) -> pd.DataFrame:
    """Intervals of one tier of a Praat TextGrid (long text format): ``start_s``,
    ``end_s``, ``text``. An unknown tier is an error listing the file's tiers."""
    if not path.is_file():
        raise InputDataError(f"{label}: file not found: {path}")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{label}: cannot read {path} as a TextGrid: {exc}") from None
    if 'Object class = "TextGrid"' not in text:
        raise InputDataError(f"{label}: {path} is not a Praat TextGrid (no 'Object class = \"TextGrid\"' line)")
    tiers = re.split(r"\n\s*item \[\d+\]:", text)[1:]
    found = {}
    for body in tiers:
        name = re.search(r'name\s*=\s*"((?:[^"]|"")*)"', body)
        if name:
            found[name.group(1)] = body
    if tier not in found:
        raise InputDataError(f"{label}: {path} has no tier {tier!r}; its tiers are {list(found)}")
    rows = [(float(a), float(b), t.replace('""', '"')) for a, b, t in _INTERVAL.findall(found[tier])]
    if not rows:
        raise InputDataError(f"{label}: tier {tier!r} of {path} has no intervals (a point tier is not accepted)")
    table = pd.DataFrame(rows, columns=["start_s", "end_s", "text"])
    if (np.diff(table["start_s"].to_numpy()) < 0).any():
        k = int(np.flatnonzero(np.diff(table["start_s"].to_numpy()) < 0)[0]) + 1
        raise InputDataError(f"{label}: {path} tier {tier!r} times out of order at interval {k + 1}")
    return table


def word_rate(words: pd.DataFrame, skip: list[str], onset_s: float, grid: TrGrid) -> tuple[np.ndarray, np.ndarray]:
    """Words per second starting in each TR window (intervals whose text is not in
    ``skip``); valid where the window lies within the transcript's span."""
    spoken = words[~words["text"].str.strip().isin(skip)]
    onsets = spoken["start_s"].to_numpy() + onset_s
    starts = grid.window_starts()
    counts = np.searchsorted(onsets, starts + grid.tr, side="left") - np.searchsorted(onsets, starts, side="left")
    span = (words["start_s"].iloc[0] + onset_s, words["end_s"].iloc[-1] + onset_s)
    valid = (starts + grid.tr > span[0]) & (starts < span[1])
    return np.where(valid, counts / grid.tr, 0.0).astype(np.float32)[:, None], valid

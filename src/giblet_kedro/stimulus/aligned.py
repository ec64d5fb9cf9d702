"""Stimulus features on the fMRI TR grid: the values, a validity mask, and provenance."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from giblet_kedro.errors import InputDataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridRun:
    """One fMRI run on the movie: file TRs ``[start, stop)``; ``onset_s`` is the movie time
    at which the run's first volume (file TR 0) began."""

    run: str
    start: int
    stop: int
    onset_s: float = 0.0

    @property
    def n_trs(self) -> int:
        return self.stop - self.start

    def window_starts(self, tr: float) -> np.ndarray:
        return self.onset_s + (self.start + np.arange(self.n_trs)) * tr

    def describe(self) -> dict[str, Any]:
        return {"run": self.run, "crop": [self.start, self.stop], "onset_s": self.onset_s, "n_trs": self.n_trs}


@dataclass(frozen=True)
class TrGrid:
    """The experiment's TR grid in movie time: its runs, concatenated in order.

    Row ``i`` of a run is the window ``[onset_s + (start + i) * tr, ... + tr)`` seconds of
    the movie. Runs follow each other in the movie (checked), so frame times only grow.
    """

    tr: float
    runs: tuple[GridRun, ...]

    def __post_init__(self):
        if not self.runs:
            raise ValueError("a TR grid needs at least one run")
        for before, after in zip(self.runs, self.runs[1:], strict=False):
            end = before.onset_s + before.stop * self.tr
            begin = after.onset_s + after.start * self.tr
            if begin < end - 1e-6:
                raise InputDataError(
                    f"run {after.run!r} starts at {begin:.2f} s of the movie, before run {before.run!r} ends "
                    f"({end:.2f} s); runs must follow each other in the movie: check fmri.runs[...].onset_s"
                )

    @classmethod
    def single(cls, tr: float, start: int, stop: int, onset_s: float = 0.0, run: str = "1") -> TrGrid:
        """A grid of one run."""
        return cls(tr=float(tr), runs=(GridRun(run, int(start), int(stop), float(onset_s)),))

    @property
    def n_trs(self) -> int:
        return sum(run.n_trs for run in self.runs)

    def window_starts(self) -> np.ndarray:
        """(n_trs,) movie seconds at which each TR's window begins."""
        return np.concatenate([run.window_starts(self.tr) for run in self.runs])

    @property
    def end_s(self) -> float:
        last = self.runs[-1]
        return float(last.onset_s + last.stop * self.tr)

    def describe(self) -> dict[str, Any]:
        return {"tr": self.tr, "n_trs": self.n_trs, "runs": [run.describe() for run in self.runs]}

    @classmethod
    def from_split(cls, split: pd.DataFrame, tr: float, onsets: dict[str, float]) -> TrGrid:
        """The grid of the fMRI split table's runs; ``onsets``: run id -> movie seconds."""
        runs = []
        for run, part in split.groupby("run", sort=False):
            file_trs = part["file_tr"].to_numpy()
            runs.append(GridRun(str(run), int(file_trs[0]), int(file_trs[-1]) + 1, float(onsets[str(run)])))
        return cls(tr=float(tr), runs=tuple(runs))


def run_segments(grid: dict[str, Any]) -> list[slice]:
    """Rows of each run in a TR-aligned array, from its ``meta["grid"]``."""
    bounds = np.cumsum([0] + [run["n_trs"] for run in grid["runs"]])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass
class TrAligned:
    """One modality on the TR grid.

    values : (n_trs, ...) array; row ``i`` belongs to TR ``i`` of the crop
    valid : (n_trs,) bool; False where the stimulus had nothing for that TR (padded)
    meta : JSON-serialisable provenance: grid, units, what was trimmed or padded, ...
    extras : arrays the extraction made that later encodings must reuse, by name (the
        EnCodec codebooks of random weights, fit on the training movie)
    """

    values: np.ndarray
    valid: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        if self.values.shape[0] != self.valid.shape[0]:
            raise ValueError(f"{self.values.shape[0]} rows of values but {self.valid.shape[0]} validity flags")


def alignment_notes(modality: str, valid: np.ndarray, grid: TrGrid, duration_s: float) -> list[str]:
    """Say (and log) what was padded or left unused, in TRs and seconds."""
    notes = []
    missing = np.flatnonzero(~valid)
    if missing.size:
        notes.append(
            f"{modality}: the stimulus covers {duration_s:.2f} s but the fMRI grid runs to {grid.end_s:.2f} s; "
            f"{missing.size} TRs (crop TRs {missing[0]}..{missing[-1]}) have no {modality}: their values are zero "
            "and they are marked invalid"
        )
    if duration_s > grid.end_s + grid.tr:
        notes.append(f"{modality}: {duration_s - grid.end_s:.2f} s of stimulus after the last TR "
                     f"({grid.end_s:.2f} s) are not used")
    for note in notes:
        log.warning(note)
    return notes


def grid_report(split: pd.DataFrame, modalities: dict[str, TrAligned]) -> dict[str, Any]:
    """Every modality must sit on exactly the fMRI TR grid of the split table (same runs,
    crops and TR); raises ``ValueError`` naming the modality on any mismatch. Returns the
    report: the grid and each modality's shape, dtype, valid TRs, onsets and notes."""
    onsets = split["onset_s"].to_numpy()
    runs = []
    for run, part in split.groupby("run", sort=False):
        file_trs = part["file_tr"].to_numpy()
        runs.append({"run": str(run), "crop": [int(file_trs[0]), int(file_trs[-1]) + 1], "n_trs": len(part)})
    expected = {"tr": float(onsets[1] - onsets[0]) if len(onsets) > 1 else None, "runs": runs, "n_trs": len(split)}
    report: dict[str, Any] = {"fmri_grid": expected, "modalities": {}}
    for name, aligned in modalities.items():
        grid = aligned.meta["grid"]
        problems = []
        got_runs = [r["run"] for r in grid["runs"]]
        if got_runs != [r["run"] for r in runs]:
            problems.append(f"runs {got_runs} != {[r['run'] for r in runs]}")
        else:
            problems += [f"run {want['run']!r}: {key} {got[key]} != {want[key]}"
                         for got, want in zip(grid["runs"], runs, strict=True)
                         for key in ("crop", "n_trs") if got[key] != want[key]]
        if grid["n_trs"] != expected["n_trs"]:
            problems.append(f"n_trs {grid['n_trs']} != {expected['n_trs']}")
        if expected["tr"] is not None and abs(grid["tr"] - expected["tr"]) > 1e-9:
            problems.append(f"TR {grid['tr']} s != {expected['tr']} s")
        if aligned.values.shape[0] != len(split):
            problems.append(f"{aligned.values.shape[0]} rows for {len(split)} TRs")
        if problems:
            raise ValueError(f"{name} features are not on the fMRI TR grid: {'; '.join(problems)}")
        report["modalities"][name] = {
            "absent": bool(aligned.meta.get("absent", False)), "shape": list(aligned.values.shape),
            "dtype": str(aligned.values.dtype), "valid_trs": int(np.asarray(aligned.valid).sum()),
            "run_onsets_s": {r["run"]: r["onset_s"] for r in grid["runs"]}, "tr": grid["tr"],
            "hrf": aligned.meta.get("hrf"), "notes": aligned.meta.get("notes", [])}
    return report

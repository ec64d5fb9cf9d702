"""Stimulus features on the fMRI TR grid: the values, a validity mask, and provenance."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrGrid:
    """The experiment's TR grid in movie time.

    TR ``i`` of the crop is the window ``[onset_s + (start + i) * tr, ... + tr)`` seconds
    of the movie, where ``start`` is the crop's first file TR and ``onset_s`` the movie
    time at which the run's first volume began.
    """

    tr: float
    start: int
    stop: int
    onset_s: float = 0.0

    @property
    def n_trs(self) -> int:
        return self.stop - self.start

    def window_starts(self) -> np.ndarray:
        """(n_trs,) movie seconds at which each TR's window begins."""
        return self.onset_s + (self.start + np.arange(self.n_trs)) * self.tr

    @property
    def end_s(self) -> float:
        return float(self.onset_s + self.stop * self.tr)

    def describe(self) -> dict[str, Any]:
        return {"tr": self.tr, "crop": [self.start, self.stop], "onset_s": self.onset_s, "n_trs": self.n_trs}

    @classmethod
    def from_split(cls, split: pd.DataFrame, tr: float, onset_s: float) -> TrGrid:
        file_trs = split["file_tr"].to_numpy()
        return cls(tr=float(tr), start=int(file_trs[0]), stop=int(file_trs[-1]) + 1, onset_s=float(onset_s))


@dataclass
class TrAligned:
    """One modality on the TR grid.

    values : (n_trs, ...) array; row ``i`` belongs to TR ``i`` of the crop
    valid : (n_trs,) bool; False where the stimulus had nothing for that TR (padded)
    meta : JSON-serialisable provenance: grid, units, what was trimmed or padded, ...
    """

    values: np.ndarray
    valid: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

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

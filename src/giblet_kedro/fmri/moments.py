"""Per-column running moments (count, mean, sum of squared deviations), merged block by
block (Chan et al., 1979) in float64: the result equals numpy's two-pass ``mean``/``std``
to float64 rounding, while only a few vectors are held. numpy only (the GPU path
imports it without the rest of the stack)."""

from __future__ import annotations

import numpy as np


class RunningMoments:
    """Count, mean and sum of squared deviations of columns, updated block by block."""

    def __init__(self, n_columns: int):
        self.count = 0
        self.mean = np.zeros(n_columns, dtype=np.float64)
        self.m2 = np.zeros(n_columns, dtype=np.float64)

    def update(self, block: np.ndarray) -> None:
        """Merge a ``(n_rows, n_columns)`` block."""
        n = block.shape[0]
        if n == 0:
            return
        # NaN/inf propagate into their own columns only; callers flag those columns.
        with np.errstate(invalid="ignore", over="ignore"):
            block_mean = block.mean(axis=0, dtype=np.float64)
            centered = block - block_mean
            block_m2 = np.einsum("ij,ij->j", centered, centered)
            total = self.count + n
            delta = block_mean - self.mean
            self.mean += delta * (n / total)
            self.m2 += block_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def std(self, ddof: int) -> np.ndarray:
        if self.count - ddof <= 0:
            raise ValueError(f"{self.count} samples cannot give a std with ddof={ddof}")
        return np.sqrt(self.m2 / (self.count - ddof))

    def select(self, columns) -> RunningMoments:
        """The moments of some columns only."""
        picked = RunningMoments(0)
        picked.count, picked.mean, picked.m2 = self.count, self.mean[columns], self.m2[columns]
        return picked

    def merge(self, other: RunningMoments) -> None:
        """Add another set of rows of the same columns (e.g. another run)."""
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total

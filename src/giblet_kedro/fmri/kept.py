"""A run's voxels as the first pass decompressed them, kept for the second pass.

The fMRI stage reads every run twice: once for its statistics (and the mask), once to
z-score it with them. Decompressing gzip is most of a pass's cost, so the first pass
keeps what it decompressed, in the file's own type (``int16`` stays 2 bytes a value),
for the columns the mask can still choose:

- a given mask: its columns;
- ``auto`` and ``lab`` (the whole grid is read): the columns that vary over the first
  block of TRs. Out-of-brain voxels are constant (usually 0) and never enter a mask,
  since every mask voxel must vary in every subject
  (:func:`giblet_kedro.fmri.stats.check_mask_usable`).

The second pass reads the copy instead of the file when it holds every column and TR it
asks for, and the file otherwise (a mask voxel constant over the first block, say). The
values are the file's raw values, converted and scaled exactly as the file's are
(:func:`giblet_kedro.fmri.reader.iter_blocks`), so both passes see the same bits. numpy
only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KeptVoxels:
    """Raw values of some columns of a run, over TRs ``[first_tr, first_tr + n)``.

    values : (n_trs, n_columns) the file's dtype (memory-mapped when loaded), scale
        factors not applied.
    columns : (n_columns,) int64 file-order flat voxel indices (see
        :func:`giblet_kedro.fmri.reader.mask_columns`), in the order of ``values``.
    first_tr : file index of the first row.
    """

    values: np.ndarray
    columns: np.ndarray
    first_tr: int

    @property
    def stop_tr(self) -> int:
        return self.first_tr + self.values.shape[0]

    def positions(self, columns: np.ndarray | None, n_grid_voxels: int) -> np.ndarray | None:
        """Where each of ``columns`` (all ``n_grid_voxels`` if None) sits in ``values``, or
        None when any is not kept."""
        wanted = np.arange(n_grid_voxels) if columns is None else np.asarray(columns)
        lookup = np.full(n_grid_voxels, -1, dtype=np.int64)
        lookup[self.columns] = np.arange(len(self.columns))
        found = lookup[wanted]
        return None if (found < 0).any() else found

    def covers(self, start: int, stop: int) -> bool:
        return self.first_tr <= start and stop <= self.stop_tr


class VoxelKeeper:
    """Collects the raw blocks of one pass over TRs ``[start, stop)`` into a
    :class:`KeptVoxels`.

    columns : the file-order columns the pass reads (its blocks' columns), or None for the
        whole grid, in which case only the columns that vary over the first block are
        kept.
    """

    def __init__(self, start: int, stop: int, columns: np.ndarray | None):
        self._start, self._n_trs = start, stop - start
        self._read_columns = columns
        self._pick: np.ndarray | None = None
        self._columns: np.ndarray | None = None
        self._values: np.ndarray | None = None
        self._filled = 0

    def add(self, t0: int, raw: np.ndarray) -> None:
        """One block, ``(n, n_read_columns)`` raw values of TRs ``[t0, t0 + n)``, in order."""
        if t0 - self._start != self._filled:
            raise ValueError(f"blocks out of order: TR {t0} after {self._start + self._filled}")
        if self._values is None:
            self._allocate(raw)
        rows = slice(self._filled, self._filled + raw.shape[0])
        if self._pick is None:
            self._values[rows] = raw
        else:
            np.take(raw, self._pick, axis=1, out=self._values[rows], mode="clip")  # clip: no buffer
        self._filled += raw.shape[0]

    def _allocate(self, first: np.ndarray) -> None:
        if self._read_columns is None:
            with np.errstate(invalid="ignore"):  # NaN columns compare False: not kept
                varies = first.max(axis=0) > first.min(axis=0) if len(first) > 1 else np.ones(first.shape[1], bool)
            self._pick = np.flatnonzero(varies)
            self._columns = self._pick.astype(np.int64)
        else:
            self._columns = np.asarray(self._read_columns, dtype=np.int64)
        self._values = np.empty((self._n_trs, len(self._columns)), dtype=first.dtype)

    def result(self) -> KeptVoxels:
        if self._values is None or self._filled != self._n_trs:
            raise ValueError(f"the pass kept {self._filled} of {self._n_trs} TRs")
        return KeptVoxels(self._values, self._columns, self._start)

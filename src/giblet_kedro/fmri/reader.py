"""Stream a 4D NIfTI run in blocks of TRs, restricted to chosen voxels.

A NIfTI volume is stored x-fastest (Fortran order), so each TR is one contiguous run of
``nx * ny * nz`` values: reading TRs ``[t0, t1)`` is one sequential read, and selecting
voxels is a column gather on a ``(n_trs, nx*ny*nz)`` view. Nothing larger than one
block of TRs is ever held, whatever the run length; gzip is decompressed with ISA-L.

Voxel order everywhere in the project is the C order of ``data[mask]`` (nibabel,
nilearn and the lab's code index that way), so a column here is the same voxel as in
``image.get_fdata()[mask]``.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.kept import KeptVoxels

TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


@dataclass(frozen=True)
class RunHeader:
    """What the header of one 4D run says, read without touching voxel data."""

    label: str
    path: Path
    grid: tuple[int, int, int]
    n_trs: int
    tr_value: float  # as written in the header (pixdim[4])
    time_unit: str  # 'sec', 'msec', 'usec' or 'unknown'
    affine: np.ndarray  # (4, 4), voxel -> mm
    dtype: np.dtype
    offset: int  # bytes before the first voxel
    slope: float
    inter: float
    # The first pass's copy of this run's voxels (see :mod:`giblet_kedro.fmri.kept`):
    # read instead of the file when it holds what is asked.
    kept: KeptVoxels | None = field(default=None, compare=False, repr=False)

    @property
    def n_grid_voxels(self) -> int:
        return int(np.prod(self.grid))

    @property
    def tr_seconds(self) -> float:
        return self.tr_value * TIME_UNIT_SECONDS.get(self.time_unit, 1.0)


def read_header(image: nib.Nifti1Image, label: str) -> RunHeader:
    """Check that ``image`` is a 4D run stored plainly on disk and describe it."""
    path = Path(image.get_filename() or "<in memory>")
    shape = image.shape
    if len(shape) == 5 and shape[4] == 1:
        shape = shape[:4]
    if len(shape) != 4:
        raise InputDataError(
            f"{label}: {path} has shape {tuple(shape)} ({len(shape)}D); "
            "accepted: a 4D run of shape (x, y, z, time)"
        )
    if shape[3] < 2:
        raise InputDataError(f"{label}: {path} has {shape[3]} volume(s); a run needs at least 2 TRs")
    proxy = image.dataobj
    if not nib.is_proxy(proxy) or getattr(proxy, "order", "F") != "F":
        raise InputDataError(f"{label}: {path} must be a NIfTI file on disk with its data in file order")
    dtype = np.dtype(proxy.dtype)
    if dtype.kind not in "iuf":
        raise InputDataError(
            f"{label}: {path} stores voxels as {dtype}; accepted: integer or float voxel types"
        )
    zooms = image.header.get_zooms()
    return RunHeader(
        label=label,
        path=path,
        grid=tuple(int(s) for s in shape[:3]),
        n_trs=int(shape[3]),
        tr_value=float(zooms[3]) if len(zooms) > 3 else 0.0,
        time_unit=image.header.get_xyzt_units()[1],
        affine=np.asarray(image.affine, dtype=np.float64),
        dtype=dtype,
        offset=int(proxy.offset),
        slope=float(proxy.slope),
        inter=float(proxy.inter),
    )


def mask_columns(mask: np.ndarray) -> np.ndarray:
    """File-order (Fortran) flat indices of the mask's voxels, listed in C order.

    ``block[:, mask_columns(mask)]`` on a ``(n_trs, nx*ny*nz)`` block equals
    ``data[mask].T`` for the 4D array ``data``.
    """
    ijk = np.argwhere(mask)  # C order
    nx, ny, _ = mask.shape
    return (ijk[:, 0] + nx * (ijk[:, 1] + ny * ijk[:, 2])).astype(np.intp)


def _open(path: Path) -> io.BufferedIOBase:
    if path.name.endswith(".gz"):
        return igzip.open(path, "rb")
    return open(path, "rb")


def _read_exactly(handle, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = handle.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_ahead(header: RunHeader, start: int, stop: int, block_trs: int) -> Iterator[tuple[int, int, bytearray]]:
    """Yield ``(t0, n_trs, buffer)`` raw blocks, decompressed one block ahead on a
    background thread (ISA-L releases the GIL), so decompression overlaps the caller's
    work on the previous block. Three buffers rotate; a buffer is reused only after the
    caller has asked for the next block."""
    volume_bytes = header.n_grid_voxels * header.dtype.itemsize
    size = min(block_trs, stop - start) * volume_bytes
    free: queue.Queue = queue.Queue()
    for _ in range(3):
        free.put(bytearray(size))
    ready: queue.Queue = queue.Queue()
    cancelled = threading.Event()

    def next_free() -> bytearray | None:
        while not cancelled.is_set():
            with contextlib.suppress(queue.Empty):
                return free.get(timeout=0.1)
        return None

    def work() -> None:
        try:
            with _open(header.path) as handle:
                handle.seek(header.offset + start * volume_bytes)
                for t0 in range(start, stop, block_trs):
                    n = min(block_trs, stop - t0)
                    buffer = next_free()
                    if buffer is None:
                        return
                    view = memoryview(buffer)[: n * volume_bytes]
                    if _read_exactly(handle, view) != len(view):
                        raise InputDataError(
                            f"{header.label}: {header.path} is truncated: the header promises "
                            f"{header.n_trs} TRs but the data end before TR {t0 + n}"
                        )
                    ready.put((t0, n, buffer))
        except (OSError, EOFError) as exc:
            ready.put(InputDataError(f"{header.label}: cannot read voxel data of {header.path}: {exc}"))
        except BaseException as exc:  # handed to the caller's thread, raised there
            ready.put(exc)
        else:
            ready.put(None)

    reader = threading.Thread(target=work, name=f"read-ahead {header.path.name}", daemon=True)
    reader.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
            free.put(item[2])
    finally:
        cancelled.set()
        reader.join(timeout=10)


def iter_blocks(
    header: RunHeader,
    start: int,
    stop: int,
    block_trs: int,
    columns: np.ndarray | None = None,
    on_raw: Callable[[int, np.ndarray], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(t0, block)`` for TRs ``[start, stop)`` of one run.

    Parameters
    ----------
    header : RunHeader
        From :func:`read_header`. When it carries the first pass's copy
        (``header.kept``) holding these TRs and columns, that is read instead of the file.
    start, stop : int
        TR range in file indices (``0 <= start < stop <= header.n_trs``).
    block_trs : int
        TRs per block; memory is about ``4 * block_trs * n_grid_voxels * itemsize``
        bytes (three raw buffers in rotation, and the block).
    columns : ndarray of int, optional
        Flat file-order voxel indices (see :func:`mask_columns`); all voxels if None.
    on_raw : callable, optional
        Called with ``(t0, raw)`` for each block before conversion: ``raw`` is
        ``(n, n_columns)`` in the file's dtype, valid only during the call (see
        :class:`giblet_kedro.fmri.kept.VoxelKeeper`).

    Yields
    ------
    t0 : int
        File index of the block's first TR.
    block : ndarray, shape (n, n_columns), float32
        Scaled voxel values (NIfTI ``scl_slope``/``scl_inter`` applied); a fresh array
        the caller may keep.
    """
    if not 0 <= start < stop <= header.n_trs:
        raise ValueError(f"TR range [{start}, {stop}) outside run of {header.n_trs} TRs")
    scaled = header.slope != 1.0 or header.inter != 0.0
    for t0, raw in _raw_blocks(header, start, stop, block_trs, columns):
        if on_raw is not None:
            on_raw(t0, raw)
        # A fresh array the caller may keep: raw is copied when it is a view (of a reused
        # read buffer or the kept copy), not when a gather already made it (float32 files).
        block = raw.astype(np.float32, copy=not raw.flags.owndata)
        if scaled:
            block *= np.float32(header.slope)
            block += np.float32(header.inter)
        yield t0, block


def _raw_blocks(header: RunHeader, start: int, stop: int, block_trs: int,
                columns: np.ndarray | None) -> Iterator[tuple[int, np.ndarray]]:
    """``(t0, raw)`` blocks of the chosen columns in the file's dtype: from the first
    pass's copy when it holds them, else decompressed from the file."""
    kept = header.kept
    positions = kept.positions(columns, header.n_grid_voxels) if kept is not None and kept.covers(start, stop) \
        else None
    if positions is not None:
        whole = len(positions) == kept.values.shape[1] and bool((positions == np.arange(len(positions))).all())
        for t0 in range(start, stop, block_trs):
            rows = kept.values[t0 - kept.first_tr: min(t0 + block_trs, stop) - kept.first_tr]
            yield t0, rows if whole else np.take(rows, positions, axis=1)
        return
    for t0, n, buffer in _read_ahead(header, start, stop, block_trs):
        raw = np.frombuffer(buffer, dtype=header.dtype, count=n * header.n_grid_voxels).reshape(n, header.n_grid_voxels)
        # np.take: about twice as fast as raw[:, columns] for these scattered columns.
        yield t0, (np.take(raw, columns, axis=1) if columns is not None else raw)

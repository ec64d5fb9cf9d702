"""Atomic writes: a reader sees the old file, or the whole new one, never a half file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _extension(path: Path) -> str:
    """Multi-part extension (``.nii.gz``): some writers infer the format from it."""
    suffixes = path.suffixes[-2:] if path.name.endswith(".gz") else path.suffixes[-1:]
    return "".join(suffixes)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any error (or interrupt) the temporary file is removed and ``target`` is left
    as it was. The rename is atomic on POSIX because both live in the same folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".partial{_extension(target)}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

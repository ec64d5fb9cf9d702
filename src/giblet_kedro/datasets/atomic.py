"""Atomic, digest-checked writes: a reader sees the old file or the whole new one, never
a half file, and a file damaged on disk later is detected rather than used.

Every file the project writes gets a hidden sidecar ``.<name>.blake2b`` holding the
BLAKE2b digest of its content. The sidecar is written (atomically) *before* the data
file is renamed into place, so a data file present on disk always has the digest of
what was meant to be there: a kill -9 between the two steps leaves either no new data
(the output is missing and is recomputed) or the old data beside the new digest (a
mismatch: recomputed). Files without a sidecar are inputs the project did not write
(a user's NIfTI) and are trusted as they are.

Hashing gigabytes of cache in every process that asks whether an output exists would
cost more than some stages, so the sidecar also records the file's size, modification
time and inode when its digest was taken. A file whose stat still matches is trusted
without reading it (truncation, a rewrite, a replaced file or the old file left by a kill
before the rename all change the stat and are hashed). Damage that keeps all three (a bit
flip on disk) is found by a full check on demand: ``kedro giblet caches --verify``
(:func:`verify_folder`), which also makes ``kedro run`` recompute what it finds damaged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

DIGEST_SUFFIX = ".blake2b"
PARTIAL_MARK = ".partial"
_CHUNK = 8 << 20
# (path, size, mtime_ns) -> problem or None: a file is checked once per process.
_VERIFIED: dict[tuple[str, int, int], str | None] = {}


def _signature(stat: os.stat_result) -> list[str]:
    """What the digest's sidecar remembers of the file it hashed."""
    return [str(stat.st_size), str(stat.st_mtime_ns), str(stat.st_ino)]


def _extension(path: Path) -> str:
    """Multi-part extension (``.nii.gz``): some writers infer the format from it."""
    suffixes = path.suffixes[-2:] if path.name.endswith(".gz") else path.suffixes[-1:]
    return "".join(suffixes)


def digest_path(path: Path) -> Path:
    """Where the digest of ``path`` is kept: ``.<name>.blake2b`` beside it."""
    return path.with_name(f".{path.name}{DIGEST_SUFFIX}")


def file_digest(path: Path) -> str:
    """BLAKE2b hex digest of a file's content, read in chunks."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_small(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_MARK)
    try:
        with os.fdopen(fd, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # "being written": see remove_stale_partials
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete what interrupted writes left in ``folder`` (a kill -9 skips every cleanup).

    A writer holds an exclusive lock on its partial file (or on ``.lock`` inside a
    partial folder) until it is renamed into place, and the kernel drops that lock when
    the writer dies; so a partial we can lock has no live writer (another run writing
    the same cache at this moment keeps its own). Returns what was removed.
    """
    removed = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(".") and PARTIAL_MARK in p.name]
    except OSError:
        return removed
    for partial in candidates:
        lock_target = partial / ".lock" if partial.is_dir() else partial
        try:
            with open(lock_target, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if partial.is_dir():
                    shutil.rmtree(partial, ignore_errors=True)
                else:
                    partial.unlink(missing_ok=True)
                removed.append(partial)
        except (BlockingIOError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue  # a live writer, or already gone
    for partial in removed:
        log.info("removed %s, left by an interrupted write", partial)
    return removed


def record_digest(content: Path, target: Path) -> None:
    """Store the digest of ``content`` as ``target``'s digest (before ``content`` is
    renamed onto ``target``: a rename keeps the size, modification time and inode
    recorded with it)."""
    _write_small(digest_path(target), " ".join([file_digest(content), *_signature(content.stat())]) + "\n")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success record its digest, then
    rename it onto ``target``.

    On any error (or interrupt) the temporary file is removed and ``target`` is left
    as it was. The rename is atomic on POSIX because both live in the same folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=f"{PARTIAL_MARK}{_extension(target)}")
    tmp = Path(tmp_name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until renamed: marks the file as being written
        yield tmp
        _fsync_path(tmp)  # writers reopen the path: sync what they wrote
        record_digest(tmp, target)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def check_file(path: str | os.PathLike, full: bool = False) -> str | None:
    """None if ``path`` is intact (or was not written by the project); else what is wrong.

    A missing file is reported as missing; a file whose content no longer matches its
    recorded digest (truncated, bit flip, a write that never finished) as damaged. The
    content is hashed only when the file's stat differs from the one recorded with the
    digest, or when ``full`` (see the module's docstring).
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED and not full:
        return _VERIFIED[key]
    try:
        recorded = digest_path(path).read_text().split()
    except FileNotFoundError:
        return None  # not written by the project: nothing to compare with
    expected = recorded[0] if recorded else ""
    if not full and recorded[1:4] == _signature(stat):
        problem = None
    else:
        actual = file_digest(path)
        problem = None if actual == expected else (
            f"content does not match its recorded digest (recorded {expected[:12]}…, now {actual[:12]}…): "
            "damaged on disk or left by an interrupted write")
        if problem is None and recorded[1:4] != _signature(stat):
            with contextlib.suppress(OSError):  # remember the stat (a read-only cache keeps hashing)
                _write_small(digest_path(path), " ".join([expected, *_signature(stat)]) + "\n")
        if problem is not None and len(recorded) > 1:
            with contextlib.suppress(OSError):  # forget the stat: every later check hashes, and fails
                _write_small(digest_path(path), expected + "\n")
    _VERIFIED[key] = problem
    return problem


def verify_folder(folder: Path) -> list[tuple[Path, str]]:
    """Hash every file the project wrote under ``folder`` against its recorded digest.

    Returns ``(file, problem)`` for each damaged one; those are also marked so that
    ``kedro run`` recomputes them (their recorded stat is dropped).
    """
    problems = []
    for sidecar in sorted(Path(folder).rglob(f".*{DIGEST_SUFFIX}")):
        if PARTIAL_MARK in sidecar.name:
            continue
        data = sidecar.with_name(sidecar.name[1:-len(DIGEST_SUFFIX)])
        problem = check_file(data, full=True)
        if problem not in (None, "missing"):
            problems.append((data, problem))
    return problems


def intact(*paths: str | os.PathLike) -> bool:
    """True if every path exists and is intact; a damaged one is logged (and will be
    recomputed by ``kedro run``, which reruns nodes whose outputs do not exist)."""
    for path in paths:
        problem = check_file(path)
        if problem == "missing":
            return False
        if problem is not None:
            log.warning("damaged cache, recomputing it: %s: %s", problem, path)
            return False
    return True

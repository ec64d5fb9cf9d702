"""Damaged caches are detected by their recorded digest and reported as missing (so
``kedro run`` recomputes them), never loaded as if valid."""

from __future__ import annotations

import os

import numpy as np
import pytest

from giblet_kedro.datasets import atomic
from giblet_kedro.datasets.aligned import TrAlignedDataset
from giblet_kedro.datasets.arrays import JsonDataset, NpyDataset, NpzDataset
from giblet_kedro.datasets.nifti import NiftiRunsDataset
from giblet_kedro.stimulus.aligned import TrAligned
from tests.conftest import random_runs, write_run


@pytest.fixture(autouse=True)
def fresh_memo():
    atomic._VERIFIED.clear()


def flip_one_bit(path, offset: int) -> None:
    """Damage a byte in place, keeping size and modification time (like disk rot)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("damage", ["truncate", "replaced", "rewritten"])
def test_damaged_array_cache_is_not_taken_for_valid(tmp_path, damage, caplog):
    """Damage that changes the file's stat is found by any process that asks whether the
    output exists (the next kedro run), without a full check."""
    dataset = NpyDataset(str(tmp_path / "fmri_train.npy"))
    dataset.save(np.arange(1000, dtype=np.float32))
    assert dataset.exists()
    atomic._VERIFIED.clear()
    target = tmp_path / "fmri_train.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "rewritten":  # same size, other bytes, a new modification time
        data = bytearray(target.read_bytes())
        data[500] ^= 0x01
        target.write_bytes(bytes(data))
    else:  # a different, complete array written by something else
        np.save(target, np.zeros(1000, np.float32))
    assert not dataset.exists()
    assert "damaged cache, recomputing it: content does not match its recorded digest" in caplog.text
    dataset.save(np.arange(1000, dtype=np.float32))  # what kedro run does next
    assert dataset.exists()


def test_a_kill_between_digest_and_rename_is_a_mismatch(tmp_path):
    """The new digest is recorded before the rename: killed in between, the old file no
    longer matches and is recomputed rather than trusted."""
    target = tmp_path / "stats.npz"
    dataset = NpzDataset(str(target))
    dataset.save({"a": np.arange(3)})
    new = tmp_path / "new.npz"
    np.savez(new, a=np.arange(4))
    atomic.record_digest(new, target)  # ... and the process dies here
    atomic._VERIFIED.clear()
    assert not dataset.exists()


def test_every_file_of_a_folder_cache_is_checked(tmp_path):
    dataset = TrAlignedDataset(str(tmp_path / "video"))
    dataset.save(TrAligned(np.ones((4, 3), np.float32), np.ones(4, bool), {"grid": {"n_trs": 4}}))
    assert dataset.exists()
    atomic._VERIFIED.clear()
    (tmp_path / "video" / "valid.npy").write_bytes((tmp_path / "video" / "valid.npy").read_bytes()[:-1])
    assert not dataset.exists()


def test_a_bit_flip_that_keeps_the_stat_is_found_by_the_full_check_then_recomputed(tmp_path, caplog):
    """Disk rot keeps size, modification time and inode: the stat memo trusts the file (no
    process re-hashes gigabytes of cache), the full check (caches --verify) finds it, and
    from then on every process sees it as damaged, so kedro run recomputes it."""
    dataset = NpyDataset(str(tmp_path / "fmri_train.npy"))
    dataset.save(np.arange(1000, dtype=np.float32))
    flip_one_bit(tmp_path / "fmri_train.npy", 500)
    atomic._VERIFIED.clear()  # a new process
    assert dataset.exists()  # the documented blind spot of the fast path
    problems = atomic.verify_folder(tmp_path)
    assert [(p.name, "does not match its recorded digest" in why) for p, why in problems] == [("fmri_train.npy", True)]
    atomic._VERIFIED.clear()  # the next kedro run
    assert not dataset.exists()
    assert "damaged cache, recomputing it" in caplog.text
    dataset.save(np.arange(1000, dtype=np.float32))
    atomic._VERIFIED.clear()
    assert dataset.exists() and atomic.verify_folder(tmp_path) == []


def test_files_the_project_did_not_write_are_trusted(tmp_path, rng):
    """A user's raw NIfTI has no digest: it exists if it is there (its content is
    fingerprinted by the spec compiler instead)."""
    path = write_run(tmp_path / "sub-01.nii.gz", random_runs(rng, 1)[0])
    assert NiftiRunsDataset({"01/1": str(path)}).exists()
    assert atomic.check_file(path) is None


def test_an_unchanged_cache_is_not_hashed_again_by_a_new_process(tmp_path, monkeypatch):
    """The digest is taken once, when the file is written; later processes compare the
    stat recorded with it. A cache written before the stat was recorded is hashed once
    more, then remembered."""
    dataset = JsonDataset(str(tmp_path / "r.json"))
    dataset.save({"a": 1})
    calls = []
    real = atomic.file_digest
    monkeypatch.setattr(atomic, "file_digest", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        atomic._VERIFIED.clear()  # a new process each time
        assert dataset.exists()
    assert calls == []
    sidecar = atomic.digest_path(tmp_path / "r.json")
    sidecar.write_text(sidecar.read_text().split()[0] + "\n")  # the older sidecar: a digest only
    for _ in range(3):
        atomic._VERIFIED.clear()
        assert dataset.exists()
    assert len(calls) == 1 and len(sidecar.read_text().split()) == 4


def test_partials_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    """kill -9 skips every cleanup: the next write in the folder removes what dead
    writers left, but never the partial file of a writer that is still at work."""
    import fcntl

    dead = tmp_path / ".fmri_train.npy.abc123.partial.npy"
    dead.write_bytes(b"x" * 1000)  # nobody holds its lock: its writer died
    dead_folder = tmp_path / ".video.partial-xyz"
    dead_folder.mkdir()
    (dead_folder / ".lock").write_text("")
    live = tmp_path / ".norm_stats.npz.def456.partial.npz"
    with open(live, "wb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a writer at work (another run, say)
        NpyDataset(str(tmp_path / "other.npy")).save(np.zeros(3))
        assert not dead.exists() and not dead_folder.exists()
        assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".norm_stats.npz.def456.partial.npz", ".other.npy.blake2b",
                                                          "other.npy"]

"""Catalog datasets: round trips, memory mapping, and writes that are never half done."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from kedro.io import DatasetError

from giblet_kedro.datasets.arrays import (
    CsvTableDataset,
    NpyDataset,
    NpzDataset,
    SafetensorsDataset,
)
from giblet_kedro.datasets.atomic import atomic_path
from giblet_kedro.datasets.nifti import NiftiDataset, NiftiRunsDataset
from giblet_kedro.errors import InputDataError


def test_npy_loads_memory_mapped_read_only(tmp_path, rng):
    data = rng.standard_normal((20, 7)).astype(np.float32)
    dataset = NpyDataset(str(tmp_path / "t" / "x.npy"))
    dataset.save(data)
    loaded = dataset.load()
    assert isinstance(loaded, np.memmap) and not loaded.flags.writeable
    np.testing.assert_array_equal(loaded, data)


def test_npz_round_trip_without_pickles(tmp_path):
    stats = {"subject_ids": np.array(["01", "02"]), "mask": np.ones((2, 2, 2), bool), "ddof": np.array(1)}
    dataset = NpzDataset(str(tmp_path / "s.npz"))
    dataset.save(stats)
    loaded = dataset.load()  # np.load(allow_pickle=False) inside: strings must be unicode arrays
    assert [str(s) for s in loaded["subject_ids"]] == ["01", "02"] and loaded["mask"].dtype == bool


def test_safetensors_round_trip_including_empty(tmp_path, rng):
    dataset = SafetensorsDataset(str(tmp_path / "h.safetensors"))
    arrays = {"subject_01": rng.standard_normal((5, 3)).astype(np.float32)}
    dataset.save(arrays)
    np.testing.assert_array_equal(dataset.load()["subject_01"], arrays["subject_01"])
    dataset.save({})
    assert dataset.load() == {}


def test_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "x.npy"
    NpyDataset(str(target)).save(np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("interrupted")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.npy.blake2b", "x.npy"]


def test_failed_save_through_dataset_leaves_nothing(tmp_path):
    class Exploding:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(DatasetError, match="boom"):
        NpzDataset(str(tmp_path / "s.npz")).save({"a": Exploding()})
    assert list(tmp_path.iterdir()) == []


def test_nifti_keeps_multi_part_extension_for_temp_files(tmp_path):
    image = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    NiftiDataset(str(tmp_path / "a.nii.gz")).save(image)
    assert (tmp_path / "a.nii.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip, as the name says


def test_runs_dataset_is_lazy_and_exists_only_when_complete(tmp_path):
    paths = {"01": str(tmp_path / "a.nii.gz"), "02": str(tmp_path / "b.nii.gz")}
    dataset = NiftiRunsDataset(paths)
    assert not dataset.exists()
    image = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    dataset.save({"01": image})
    assert not dataset.exists()
    dataset.save({"02": image})
    assert dataset.exists()
    loaded = dataset.load()
    assert set(loaded) == {"01", "02"} and not loaded["01"].in_memory


def test_runs_dataset_reads_a_header_when_it_is_asked_for(tmp_path, monkeypatch):
    """A map node of the fMRI stage reads its own run's header, not every subject's."""
    from giblet_kedro.datasets import nifti

    image = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    paths = {f"0{i}": str(tmp_path / f"{i}.nii.gz") for i in range(1, 4)}
    NiftiRunsDataset(paths).save(dict.fromkeys(paths, image))
    read = []
    real = nifti.load_nifti
    monkeypatch.setattr(nifti, "load_nifti", lambda path, label: read.append(label) or real(path, label))
    runs = NiftiRunsDataset(paths).load()
    assert read == [] and list(runs) == ["01", "02", "03"] and len(runs) == 3
    assert runs["02"].shape == (2, 2, 2, 3) and runs["02"] is runs["02"] and len(read) == 1
    Path(paths["03"]).unlink()
    with pytest.raises(InputDataError, match="3.nii.gz"):
        runs["03"]  # noqa: B018 - the read is the point


def test_csv_table_round_trip(tmp_path):
    table = pd.DataFrame({"subject_id": ["01", "02"], "n": [1, 2]})
    dataset = CsvTableDataset(str(tmp_path / "t.csv"), dtype={"subject_id": str})
    dataset.save(table)
    pd.testing.assert_frame_equal(dataset.load(), table)

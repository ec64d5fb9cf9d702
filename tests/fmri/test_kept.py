"""The first pass's kept voxels: the second pass reads them instead of the file, and sees
the file's values bitwise; what they cannot serve is read from the file."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest

import giblet_kedro.fmri.reader as reader
from giblet_kedro.datasets.arrays import KeptVoxelsDataset
from giblet_kedro.fmri.kept import KeptVoxels, VoxelKeeper
from giblet_kedro.fmri.reader import iter_blocks, mask_columns, read_header
from tests.conftest import random_runs, write_run


def first_pass(header, start, stop, block, columns=None) -> KeptVoxels:
    keeper = VoxelKeeper(start, stop, columns)
    for _ in iter_blocks(header, start, stop, block, columns, keeper.add):
        pass
    return keeper.result()


def read(header, start, stop, block, columns=None) -> np.ndarray:
    return np.concatenate([b for _, b in iter_blocks(header, start, stop, block, columns)])


def refuse_file_reads(monkeypatch) -> None:
    """From now on decompressing the file fails: what still reads, read the kept voxels."""
    def refuse(*args):
        raise AssertionError("the file was read")

    monkeypatch.setattr(reader, "_read_ahead", refuse)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize(("block", "second_block"), [(7, 7), (5, 64), (64, 3)])
def test_the_kept_whole_grid_serves_the_mask_bitwise_without_reading_the_file(tmp_path, rng, dtype, block,
                                                                             second_block, monkeypatch):
    data = random_runs(rng, 1, grid=(6, 5, 4), n_trs=31)[0]  # zero outside an ellipsoid
    header = read_header(nib.load(write_run(tmp_path / "run.nii.gz", data, dtype=dtype)), "x")
    assert dtype == np.float32 or header.slope != 1.0  # int16 carries scale factors
    kept = first_pass(header, 2, 29, block)
    inside = data.std(axis=3) > 0
    # only the voxels that vary are kept, in the file's own type
    np.testing.assert_array_equal(np.sort(kept.columns), np.flatnonzero(inside.ravel(order="F")))
    assert kept.values.dtype == header.dtype and kept.values.shape == (27, inside.sum())
    columns = mask_columns(inside)
    expected = read(header, 2, 29, second_block, columns)
    # the file path itself, against nibabel (scale factors applied in float64 there)
    full = nib.load(tmp_path / "run.nii.gz").get_fdata()
    np.testing.assert_allclose(expected, full[inside].T[2:29], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(kept.values * header.slope + header.inter,
                               full.reshape(-1, 31, order="F")[kept.columns].T[2:29], rtol=1e-6, atol=1e-4)
    within = read(header, 10, 20, second_block, columns[::3])
    refuse_file_reads(monkeypatch)
    copy = dataclasses.replace(header, kept=kept)
    assert read(copy, 2, 29, second_block, columns).tobytes() == expected.tobytes()
    assert read(copy, 10, 20, second_block, columns[::3]).tobytes() == within.tobytes()


def test_a_given_mask_is_kept_whole_and_served_in_its_order(tmp_path, rng, monkeypatch):
    data = random_runs(rng, 1, grid=(6, 5, 4), n_trs=20)[0]
    header = read_header(nib.load(write_run(tmp_path / "run.nii.gz", data)), "x")
    mask = data.std(axis=3) > 0
    mask[0, 0, 0] = True  # a constant voxel inside a given mask is kept too
    columns = mask_columns(mask)
    kept = first_pass(header, 0, 20, 6, columns)
    np.testing.assert_array_equal(kept.columns, columns)
    expected = read(header, 0, 20, 4, columns)
    refuse_file_reads(monkeypatch)
    with pytest.raises(AssertionError, match="file was read"):  # the guard works
        read(header, 0, 20, 4, columns)
    assert read(dataclasses.replace(header, kept=kept), 0, 20, 4, columns).tobytes() == expected.tobytes()


def test_what_the_copy_does_not_hold_is_read_from_the_file(tmp_path, rng):
    """A mask voxel constant over the first block (so not kept), TRs outside the kept
    range: the file is read, and the values are still the file's."""
    data = random_runs(rng, 1, grid=(6, 5, 4), n_trs=30)[0]
    late = (2, 2, 2)
    data[late][:8] = data[late][0]  # constant over the first block of 8 TRs only
    header = read_header(nib.load(write_run(tmp_path / "run.nii.gz", data)), "x")
    kept = first_pass(header, 0, 25, 8)
    flat = np.ravel_multi_index(late, data.shape[:3], order="F")
    assert flat not in kept.columns
    copy = dataclasses.replace(header, kept=kept)
    columns = mask_columns(data.std(axis=3) > 0)
    assert flat in columns and kept.positions(columns, header.n_grid_voxels) is None
    assert read(copy, 0, 25, 8, columns).tobytes() == read(header, 0, 25, 8, columns).tobytes()
    assert not kept.covers(0, 30)
    assert read(copy, 0, 30, 8, columns[:5]).tobytes() == read(header, 0, 30, 8, columns[:5]).tobytes()


def test_nan_columns_are_not_kept(tmp_path, rng):
    data = random_runs(rng, 1, grid=(6, 5, 4), n_trs=12)[0]
    data[3, 2, 1, 4] = np.nan
    header = read_header(nib.load(write_run(tmp_path / "run.nii", data, dtype=np.float32)), "x")
    kept = first_pass(header, 0, 12, 12)
    assert np.ravel_multi_index((3, 2, 1), data.shape[:3], order="F") not in kept.columns


def test_blocks_must_come_in_order():
    keeper = VoxelKeeper(5, 15, np.arange(3))
    keeper.add(5, np.zeros((4, 3), np.int16))
    with pytest.raises(ValueError, match="out of order"):
        keeper.add(12, np.zeros((3, 3), np.int16))
    with pytest.raises(ValueError, match="4 of 10 TRs"):
        keeper.result()


def test_the_dataset_round_trips_and_a_copy_without_its_index_does_not_exist(tmp_path):
    path = tmp_path / "runs" / "sub-01_run-1" / "voxels.npy"
    dataset = KeptVoxelsDataset(str(path))
    kept = KeptVoxels(np.arange(12, dtype=np.int16).reshape(4, 3), np.array([7, 2, 9]), 3)
    dataset.save(kept)
    loaded = dataset.load()
    assert isinstance(loaded.values, np.memmap) and loaded.first_tr == 3
    np.testing.assert_array_equal(loaded.values, kept.values)
    np.testing.assert_array_equal(loaded.columns, kept.columns)
    assert dataset.exists()
    (path.parent / "voxels.index.npz").unlink()
    assert not dataset.exists()

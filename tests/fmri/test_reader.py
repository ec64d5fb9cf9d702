"""Streaming reads equal nibabel's full read, for every storage layout we accept."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.reader import iter_blocks, mask_columns, read_header
from tests.conftest import random_runs, write_run


def stream(path, start, stop, block, mask=None):
    header = read_header(nib.load(path), "subject 'x'")
    columns = None if mask is None else mask_columns(mask)
    parts = [b for _, b in iter_blocks(header, start, stop, block, columns)]
    return np.concatenate(parts)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64, ">i2"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("block", [1, 7, 64])
def test_blocks_equal_nibabel_scaled_data_in_mask_order(tmp_path, rng, dtype, suffix, block):
    data = random_runs(rng, 1, grid=(6, 5, 4), n_trs=23)[0]
    path = write_run(tmp_path / f"run{suffix}", data, dtype=dtype)
    image = nib.load(path)
    expected_full = image.get_fdata()  # nibabel applies scl_slope / scl_inter
    mask = expected_full.std(axis=3) > 0
    got = stream(path, 3, 20, block, mask)
    np.testing.assert_allclose(got, expected_full[mask].T[3:20], rtol=1e-6, atol=1e-4)
    got_all = stream(path, 0, 23, block)
    np.testing.assert_allclose(got_all, expected_full.reshape(-1, 23, order="F").T, rtol=1e-6, atol=1e-4)


def test_scale_factors_are_honoured(tmp_path, rng):
    data = random_runs(rng, 1, n_trs=10)[0]
    path = write_run(tmp_path / "run.nii.gz", data, dtype=np.int16)
    header = read_header(nib.load(path), "x")
    assert header.slope != 1.0  # nibabel stored a real scale factor
    np.testing.assert_allclose(stream(path, 0, 10, 4).T.reshape(data.shape, order="F"), data, atol=abs(header.slope))


def test_real_file_with_scale_factors(nibabel_data):
    path = nibabel_data / "functional.nii"  # int16, slope 0.0754, inter 3100.76
    full = nib.load(path).get_fdata()
    mask = full.std(axis=3) > 0
    np.testing.assert_allclose(stream(path, 0, 20, 6, mask), full[mask].T, rtol=1e-6)


def test_mask_columns_match_c_order_boolean_indexing(rng):
    volume = rng.standard_normal((4, 3, 5))
    mask = volume > 0
    np.testing.assert_array_equal(volume.ravel(order="F")[mask_columns(mask)], volume[mask])


def test_three_d_image_is_rejected_with_shape(tmp_path):
    path = tmp_path / "anat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)
    with pytest.raises(InputDataError, match=r"subject 'x'.*\(4, 4, 4\).*3D.*4D run"):
        read_header(nib.load(path), "subject 'x'")


def test_truncated_file_is_detected_not_zero_filled(tmp_path, rng):
    data = random_runs(rng, 1, n_trs=30)[0]
    path = write_run(tmp_path / "run.nii.gz", data)
    raw = gzip.decompress(path.read_bytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(raw[: len(raw) * 2 // 3]))
    header = read_header(nib.load(cut), "subject 'x'")
    with pytest.raises(InputDataError, match="truncated"):
        list(iter_blocks(header, 0, 30, 8))

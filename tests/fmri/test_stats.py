"""Statistics, masks and checks against independent numpy computations."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.checks import check_runs, check_tr, resolve_crop
from giblet_kedro.fmri.reader import mask_columns, read_header
from giblet_kedro.fmri.stats import RunningMoments, auto_mask, lab_mask, subject_moments
from tests.conftest import random_runs, write_run


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("sizes", [[50], [1, 1, 1, 47], [13, 7, 30], [2, 48]])
def test_running_moments_equal_numpy(rng, ddof, sizes):
    data = rng.standard_normal((sum(sizes), 9)) * 30 + 1000  # large offset: a precision trap
    moments = RunningMoments(9)
    for block in np.split(data, np.cumsum(sizes)[:-1]):
        moments.update(block.astype(np.float32))
    reference = data.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(moments.mean, reference.mean(0), rtol=1e-12)
    np.testing.assert_allclose(moments.std(ddof), reference.std(0, ddof=ddof), rtol=1e-9)


def test_subject_moments_use_only_training_trs_of_the_crop(tmp_path, rng):
    data = random_runs(rng, 1, n_trs=60)[0]
    path = write_run(tmp_path / "run.nii.gz", data)
    header = read_header(nib.load(path), "s")
    train = np.arange(0, 30)  # crop-relative
    m = subject_moments(header, (10, 50), train, ddof=1, block_trs=7)
    full = nib.load(path).get_fdata().reshape(-1, 60, order="F")
    expected = full[:, 10:40]
    np.testing.assert_allclose(m.mean, expected.mean(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.std, expected.std(1, ddof=1), rtol=1e-5, atol=1e-6)


def _lab_rule_by_hand(early_stds: list[np.ndarray], percentile: float, fraction: float) -> np.ndarray:
    votes = sum((s > np.percentile(s[s > 0], percentile)).astype(int) for s in early_stds)
    return votes >= math.ceil(fraction * len(early_stds))


def test_lab_mask_matches_the_rule_as_written(tmp_path, rng):
    grid, n_trs = (6, 5, 4), 50
    runs = random_runs(rng, 5, grid=grid, n_trs=n_trs)
    headers, moments = {}, {}
    for i, data in enumerate(runs):
        data = data * rng.uniform(0.5, 2.0, size=grid)[..., None]  # voxel-varying stds
        headers[i] = read_header(nib.load(write_run(tmp_path / f"{i}.nii.gz", data, dtype=np.float32)), str(i))
        moments[i] = subject_moments(headers[i], (0, n_trs), np.arange(40), 1, 16, early_rows=np.arange(20))
    mask = lab_mask(moments, grid, percentile=10, min_subject_fraction=0.5)
    early = [np.asarray(nib.load(tmp_path / f"{i}.nii.gz").get_fdata())[..., :20].std(axis=3, ddof=1)
             for i in range(5)]
    np.testing.assert_array_equal(mask, _lab_rule_by_hand(early, 10, 0.5))
    assert 0 < mask.sum() < mask.size


def test_auto_mask_is_variance_in_every_subject(tmp_path, rng):
    grid = (5, 4, 3)
    runs = random_runs(rng, 3, grid=grid, n_trs=20)
    runs[1][2, 1, 1, :] = 7.0  # constant in one subject only
    moments = {}
    for i, data in enumerate(runs):
        header = read_header(nib.load(write_run(tmp_path / f"{i}.nii.gz", data, dtype=np.float32)), str(i))
        moments[i] = subject_moments(header, (0, 20), np.arange(16), 1, 8)
    mask = auto_mask(moments, grid)
    expected = np.all([r[..., :16].std(axis=3) > 0 for r in runs], axis=0)
    np.testing.assert_array_equal(mask, expected)
    assert not mask[2, 1, 1]


def _header(tmp_path, name, tr, unit="sec", n_trs=10, affine=None, grid=(3, 3, 3)):
    data = np.random.default_rng(0).standard_normal((*grid, n_trs))
    path = write_run(tmp_path / name, data, affine=affine, tr=tr, dtype=np.float32, time_unit=unit)
    return read_header(nib.load(path), f"subject {name!r}")


def test_header_tr_in_milliseconds_is_converted(tmp_path):
    check_tr(_header(tmp_path, "a.nii", 1500.0, unit="msec"), 1.5)


def test_real_2000_sec_trap_is_caught_with_a_diagnosis(nibabel_data):
    header = read_header(nib.load(nibabel_data / "example4d.nii.gz"), "subject '01'")
    with pytest.raises(InputDataError, match=r"subject '01'.*2000 sec.*fmri.tr is 2 s.*milliseconds"):
        check_tr(header, 2.0)


def test_tr_mismatch_names_the_subject(tmp_path):
    with pytest.raises(InputDataError, match=r"subject 'b.nii'.*header TR is 2 sec.*fmri.tr is 1.5"):
        check_runs([_header(tmp_path, "a.nii", 1.5), _header(tmp_path, "b.nii", 2.0)], 1.5)


def test_affine_and_grid_mismatches_name_the_subject(tmp_path):
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    with pytest.raises(InputDataError, match=r"subject 'b.nii'.*different affine.*2 mm"):
        check_runs([_header(tmp_path, "a.nii", 1.5), _header(tmp_path, "b.nii", 1.5, affine=shifted)], 1.5)
    with pytest.raises(InputDataError, match=r"subject 'c.nii'.*grid \(3, 3, 4\)"):
        check_runs([_header(tmp_path, "a.nii", 1.5), _header(tmp_path, "c.nii", 1.5, grid=(3, 3, 4))], 1.5)


def test_tr_counts_must_agree_or_be_cropped(tmp_path):
    a, b = _header(tmp_path, "a.nii", 1.5, n_trs=12), _header(tmp_path, "b.nii", 1.5, n_trs=10)
    with pytest.raises(InputDataError, match=r"different numbers of TRs.*'a.nii'.*12.*'b.nii'.*10.*fmri.trs"):
        resolve_crop([a, b], None)
    assert resolve_crop([a, b], (2, 10)) == (2, 10)
    with pytest.raises(InputDataError, match=r"\[0, 11\).*subject 'b.nii' has 10"):
        resolve_crop([a, b], (0, 11))


def test_mask_columns_and_moments_agree_with_masked_numpy(tmp_path, rng):
    data = random_runs(rng, 1, n_trs=20)[0]
    path = write_run(tmp_path / "r.nii.gz", data)
    mask = data.std(axis=3) > 0
    header = read_header(nib.load(path), "s")
    m = subject_moments(header, (0, 20), np.arange(20), 0, 5, columns=mask_columns(mask))
    np.testing.assert_allclose(m.std, nib.load(path).get_fdata()[mask].std(axis=1), rtol=1e-5)

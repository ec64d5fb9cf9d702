"""fMRI nodes against hand-computed numpy references, and every bad input of the issue."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from giblet_kedro.datasets.confounds import ConfoundTablesDataset
from giblet_kedro.datasets.nifti import NiftiRunsDataset
from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.volume import unmask
from giblet_kedro.pipelines.fmri.nodes import (
    build_fmri_tensor,
    compute_norm_stats,
    inspect_runs,
    make_split,
    normalize_heldout,
)
from giblet_kedro.spec.schema import FmriSpec
from giblet_kedro.validation.arrays import validate_fmri_tensor, validate_norm_stats
from giblet_kedro.validation.tables import SubjectTable, validate_split_table
from tests.conftest import random_runs, write_run


def fmri_spec(paths: dict[str, str], **fields) -> FmriSpec:
    """A spec of these runs; without gaps between the split's blocks unless asked (the
    references here z-score contiguous blocks by hand; gaps have tests of their own)."""
    fields["split"] = {"gap_trs": 0, **fields.get("split", {"val": 0.1, "test": 0.1})}
    return FmriSpec(subjects=paths, tr=fields.pop("tr", 1.5), chunk_trs=fields.pop("chunk_trs", 7), **fields)


def run_stage(paths, mask_file=None, heldout=None, with_report=False, **fields):
    """The fMRI pipeline's nodes in order, with catalog validators applied as Kedro would."""
    spec = fmri_spec(paths, heldout=dict(heldout or {}), **fields)
    runs = NiftiRunsDataset(spec.run_files).load()
    confounds = ConfoundTablesDataset(spec.confound_files).load()
    subjects = SubjectTable.validate(inspect_runs(runs, spec))
    split = validate_split_table(make_split(subjects, spec))
    masks = {"mask": nib.load(mask_file)} if mask_file else {}
    stats, report = compute_norm_stats(runs, masks, confounds, split, spec)
    validate_norm_stats(stats)
    tensor, covered = build_fmri_tensor(runs, confounds, stats, split, spec)
    assert covered.all()
    validate_fmri_tensor(tensor)
    held = normalize_heldout({s: nib.load(p) for s, p in (heldout or {}).items()},
                             ConfoundTablesDataset(spec.heldout_confound_files).load(), stats, spec)
    if with_report:
        return subjects, split, stats, tensor, held, report
    return subjects, split, stats, tensor, held


@pytest.fixture
def three_subjects(tmp_path, rng):
    runs = random_runs(rng, 3, grid=(6, 5, 4), n_trs=50)
    return {f"{i:02d}": str(write_run(tmp_path / f"sub-{i:02d}.nii.gz", d)) for i, d in enumerate(runs, 1)}


def by_hand(paths, crop, n_train, ddof):
    """Independent reference: nibabel full reads, crop, stats over train TRs, z-score all."""
    data = {s: nib.load(p).get_fdata()[..., crop[0]:crop[1]] for s, p in paths.items()}
    mask = np.all([d[..., :n_train].std(axis=3) > 0 for d in data.values()], axis=0)
    z, stats = {}, {}
    for s, d in data.items():
        x = d[mask].T  # (n_trs, n_voxels)
        mean, std = x[:n_train].mean(0), x[:n_train].std(0, ddof=ddof)
        stats[s] = (mean, std)
        z[s] = (x - mean) / std
    return mask, stats, z


@pytest.mark.parametrize("ddof", [0, 1])
def test_cross_subject_equals_numpy_zscore_then_average(three_subjects, ddof):
    subjects, split, stats, tensor, _ = run_stage(three_subjects, trs=(5, 45), zscore={"ddof": ddof},
                                                  split={"val": 0.1, "test": 0.15})
    n_train = (split["split"] == "train").sum()
    assert n_train == 40 - 4 - 6
    mask, ref_stats, z = by_hand(three_subjects, (5, 45), n_train, ddof)
    np.testing.assert_array_equal(stats["mask"], mask)
    for sid, (mean, std) in ref_stats.items():
        np.testing.assert_allclose(stats[f"subject_{sid}_mean"], mean, rtol=1e-6)
        np.testing.assert_allclose(stats[f"subject_{sid}_std"], std, rtol=1e-5)
    assert tensor.shape == (40, mask.sum()) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, np.mean(list(z.values()), axis=0), atol=2e-5)
    # stats come from train TRs only: train rows are standardized, val/test rows are not re-fit
    assert np.allclose(tensor[:n_train].mean(0), np.mean([v[:n_train].mean(0) for v in z.values()], 0), atol=1e-5)
    assert list(stats["train_trs"]) == list(range(n_train))  # rows of the cropped data
    assert list(stats["run_1_stats_trs"]) == list(range(5, 5 + n_train))  # file indices, after the crop
    assert list(stats["crop"]) == [5, 45] and int(stats["ddof"]) == ddof


def test_subjects_are_summed_by_group_then_the_groups_added(tmp_path, rng):
    """fmri.subjects_per_group: 2 of 4 subjects makes ((z1 + z2) + (z3 + z4)) / 4, in
    float32, in the single-process stage and in the map-reduce alike (a different order
    of additions rounds differently: the test tells them apart)."""
    from giblet_kedro.fmri.partials import Partitions
    from giblet_kedro.pipelines.fmri.nodes import combine_normalized, normalized_group

    runs = random_runs(rng, 4, grid=(6, 5, 4), n_trs=50)
    paths = {f"{i:02d}": str(write_run(tmp_path / f"sub-{i:02d}.nii.gz", d)) for i, d in enumerate(runs, 1)}
    _, split, stats, tensor, _ = run_stage(paths, subjects_per_group=2)
    *_, z = run_stage(paths, subjects_per_group=2, mode="per_subject")[:4]
    z1, z2, z3, z4 = (np.asarray(z[i]) for i in range(4))
    by_groups = (z1 + z2) + (z3 + z4)
    by_groups /= np.float32(4)
    in_order = ((z1 + z2) + z3) + z4
    in_order /= np.float32(4)
    assert tensor.tobytes() == by_groups.tobytes() and by_groups.tobytes() != in_order.tobytes()

    spec = fmri_spec(paths, subjects_per_group=2)
    loaded = NiftiRunsDataset(spec.run_files).load()
    groups = Partitions(tuple(spec.run_keys), 2).groups()
    assert [subjects for subjects, _ in groups.values()] == [["01", "02"], ["03", "04"]]
    sums = {name: normalized_group(loaded, {}, stats, split, spec, subjects, run)[0]
            for name, (subjects, run) in groups.items()}
    assert combine_normalized(stats, spec, **sums)[0].tobytes() == tensor.tobytes()


@pytest.mark.parametrize(("n", "size", "sizes"), [(5, 4, [3, 2]), (8, 4, [4, 4]), (17, 4, [4, 4, 3, 3, 3]),
                                                  (3, 4, [3]), (4, 1, [1, 1, 1, 1])])
def test_subject_groups_are_contiguous_and_even(n, size, sizes):
    from giblet_kedro.fmri.partials import subject_groups

    ids = [f"{i:02d}" for i in range(n)]
    groups = subject_groups(ids, size)
    assert [len(g) for g in groups] == sizes and sum(groups, []) == ids


def test_per_subject_keeps_subjects_apart_and_counts_samples(three_subjects):
    _, _, stats, cross, _ = run_stage(three_subjects)
    _, _, _, per, _ = run_stage(three_subjects, mode="per_subject")
    n_voxels = int(stats["mask"].sum())
    assert cross.shape == (50, n_voxels)  # one sample per TR
    assert per.shape == (3, 50, n_voxels)  # one sample per subject and TR: 3 x 50 = 150
    np.testing.assert_allclose(per.mean(axis=0), cross, atol=1e-5)
    _, _, z = by_hand(three_subjects, (0, 50), 40, 1)
    np.testing.assert_allclose(per[1], z["02"], atol=2e-5)


def test_heldout_runs_use_the_saved_training_stats(tmp_path, three_subjects, rng):
    new_run = random_runs(rng, 1, grid=(6, 5, 4), n_trs=30)[0] * 1.1 + 40
    held_path = write_run(tmp_path / "sub-02_run-2.nii.gz", new_run)
    _, _, stats, _, held = run_stage(three_subjects, heldout={"02": str(held_path)})
    x = nib.load(held_path).get_fdata()[stats["mask"]].T
    expected = (x - stats["subject_02_mean"]) / stats["subject_02_std"]
    assert list(held) == ["subject_02"]
    np.testing.assert_allclose(held["subject_02"], expected, atol=2e-5)
    assert abs(held["subject_02"].mean()) > 0.1  # not re-standardized on its own data


def test_stats_file_has_the_contract_layout(three_subjects):
    _, _, stats, _, _ = run_stage(three_subjects)
    assert [str(s) for s in stats["subject_ids"]] == ["01", "02", "03"]
    for key in ("mask", "affine", "ddof", "train_trs", "subject_01_mean", "subject_03_std"):
        assert key in stats
    assert stats["mask"].dtype == bool and stats["affine"].shape == (4, 4)


def test_voxel_vector_back_to_nifti_in_original_space(three_subjects):
    _, _, stats, tensor, _ = run_stage(three_subjects)
    image = unmask(tensor, stats["mask"], stats["affine"])
    assert image.shape == (6, 5, 4, 50)
    np.testing.assert_array_equal(image.get_fdata()[stats["mask"]].T, tensor)
    np.testing.assert_array_equal(image.affine, nib.load(three_subjects["01"]).affine)
    single = unmask(tensor[0], stats["mask"], stats["affine"])
    assert single.shape == (6, 5, 4) and np.all(single.get_fdata()[~stats["mask"]] == 0)


def test_given_mask_file(tmp_path, three_subjects):
    mask = np.zeros((6, 5, 4), bool)
    mask[1:4, 1:4, 1:3] = True
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), nib.load(three_subjects["01"]).affine), path)
    _, _, stats, tensor, _ = run_stage(three_subjects, mask_file=path, mask=str(path))
    np.testing.assert_array_equal(stats["mask"], mask)
    assert tensor.shape == (50, mask.sum())


def test_lab_mask_through_the_stage(tmp_path, rng):
    grid, n_trs = (6, 5, 4), 40
    runs = [d * rng.uniform(0.5, 2.0, size=grid)[..., None] for d in random_runs(rng, 4, grid=grid, n_trs=n_trs)]
    paths = {f"{i}": str(write_run(tmp_path / f"s{i}.nii.gz", d, dtype=np.float32)) for i, d in enumerate(runs)}
    _, _, stats, tensor, _ = run_stage(paths, mask="lab", lab_mask={"first_trs": 25, "percentile": 30})
    early = [nib.load(p).get_fdata()[..., :25].std(axis=3, ddof=1) for p in paths.values()]
    votes = sum((e > np.percentile(e[e > 0], 30)).astype(int) for e in early)
    np.testing.assert_array_equal(stats["mask"], votes >= 2)
    assert str(stats["mask_kind"]) == "lab" and tensor.shape == (40, (votes >= 2).sum())


# ------------------------------------------------------------------------ bad input
def test_zero_variance_voxel_inside_given_mask_names_subject_and_voxel(tmp_path, rng):
    runs = random_runs(rng, 2, grid=(6, 5, 4), n_trs=30)
    runs[1][3, 2, 1, :] = 900.0
    paths = {f"{i}": str(write_run(tmp_path / f"s{i}.nii.gz", d)) for i, d in enumerate(runs)}
    mask_path = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.uint8), np.eye(4)), mask_path)
    with pytest.raises(InputDataError, match=r"subject '1'.*zero variance.*\(3, 2, 1\)|subject '0'"):
        run_stage(paths, mask_file=mask_path, mask=str(mask_path))


def test_nan_voxels_excluded_from_auto_mask_and_logged(tmp_path, rng, caplog):
    runs = random_runs(rng, 2, grid=(6, 5, 4), n_trs=30)
    runs[0][3, 2, 1, 10:12] = np.nan
    paths = {f"{i}": str(write_run(tmp_path / f"s{i}.nii.gz", d, dtype=np.float32)) for i, d in enumerate(runs)}
    _, _, stats, tensor, _ = run_stage(paths)
    assert not stats["mask"][3, 2, 1] and np.isfinite(tensor).all()
    assert "subject '0': 1 voxels hold NaN/inf" in caplog.text


def test_nan_voxels_inside_given_mask_are_an_error(tmp_path, rng):
    runs = random_runs(rng, 2, grid=(6, 5, 4), n_trs=30, background_zero=False)
    runs[1][0, 0, 0, 3] = np.inf
    paths = {f"{i}": str(write_run(tmp_path / f"s{i}.nii.gz", d, dtype=np.float32)) for i, d in enumerate(runs)}
    mask_path = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.uint8), np.eye(4)), mask_path)
    with pytest.raises(InputDataError, match=r"subject '1': 1 voxels inside the given mask hold NaN/inf.*\(0, 0, 0\)"):
        run_stage(paths, mask_file=mask_path, mask=str(mask_path))


def test_subject_with_different_tr_count(tmp_path, rng):
    a, b = random_runs(rng, 2, n_trs=30)
    paths = {"01": str(write_run(tmp_path / "a.nii.gz", a)), "02": str(write_run(tmp_path / "b.nii.gz", b[..., :25]))}
    with pytest.raises(InputDataError, match=r"different numbers of TRs.*'01': 30.*'02': 25"):
        run_stage(paths)
    _, split, _, tensor, _ = run_stage(paths, trs=(0, 25))
    assert tensor.shape[0] == 25 == len(split)


def test_mismatched_affine_names_the_subject(tmp_path, rng):
    a, b = random_runs(rng, 2)
    moved = np.eye(4)
    moved[:3, 3] = [0, 0, 3]
    paths = {"01": str(write_run(tmp_path / "a.nii.gz", a)), "02": str(write_run(tmp_path / "b.nii.gz", b, affine=moved))}
    with pytest.raises(InputDataError, match=r"subject '02'.*different affine"):
        run_stage(paths)


def test_unreadable_file_names_the_subject(tmp_path, rng):
    from giblet_kedro.datasets.nifti import NiftiRunsDataset

    good = write_run(tmp_path / "a.nii.gz", random_runs(rng, 1)[0])
    bad = tmp_path / "b.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    from giblet_kedro.preflight import user_error as _user_error

    runs = NiftiRunsDataset({"01": str(good), "02": str(bad)}).load()  # headers are read when asked for
    with pytest.raises(Exception) as info:
        dict(runs)  # what inspect_fmri_runs, the stage's first node, does
    assert re.search(r"subject '02'.*b.nii.gz is not a readable NIfTI", str(_user_error(info.value)))


def test_all_zero_subject_is_a_clear_error(tmp_path, rng):
    runs = random_runs(rng, 2)
    paths = {"01": str(write_run(tmp_path / "a.nii.gz", runs[0])),
             "02": str(write_run(tmp_path / "b.nii.gz", np.zeros_like(runs[1])))}
    with pytest.raises(InputDataError, match=r"subject '02'.*every voxel is constant.*Remove the subject"):
        run_stage(paths)


# ----------------------------------------------------------------------- real data
def alice_runs(alice_dir, tmp_path, ids):
    """Each subject's 362 TRs x 6 ROIs wrapped as a (6, 1, 1, 362) NIfTI (float32, TR 2 s)."""
    paths = {}
    for sid in ids:
        series = np.loadtxt(alice_dir / f"{sid}-timecourses.txt")  # (362, 6)
        paths[sid] = str(write_run(tmp_path / f"{sid}.nii.gz", series.T[:, None, None, :], tr=2.0, dtype=np.float32))
    return paths


def test_alice_real_data_stats_match_numpy(alice_dir, tmp_path):
    ids = ["s18", "s22", "s23", "s24"]
    paths = alice_runs(alice_dir, tmp_path, ids)
    _, split, stats, tensor, _ = run_stage(paths, tr=2.0)
    n_train = int((split["split"] == "train").sum())
    zs = []
    for sid in ids:
        x = np.loadtxt(alice_dir / f"{sid}-timecourses.txt").astype(np.float32).astype(np.float64)
        mean, std = x[:n_train].mean(0), x[:n_train].std(0, ddof=1)
        np.testing.assert_allclose(stats[f"subject_{sid}_mean"], mean, rtol=1e-6)
        np.testing.assert_allclose(stats[f"subject_{sid}_std"], std, rtol=1e-5)
        zs.append((x - mean) / std)
    np.testing.assert_allclose(tensor, np.mean(zs, axis=0), atol=1e-5)
    assert tensor.shape == (362, 6)


def test_alice_all_zero_subject_s33_is_reported(alice_dir, tmp_path):
    paths = alice_runs(alice_dir, tmp_path, ["s18", "s33"])
    with pytest.raises(InputDataError, match=r"subject 's33'.*every voxel is constant"):
        run_stage(paths, tr=2.0)


def test_nitime_real_runs(nitime_data):
    paths = {"1": str(nitime_data / "fmri1.nii.gz"), "2": str(nitime_data / "fmri2.nii.gz")}
    _, _, stats, tensor, _ = run_stage(paths, tr=1.35, trs=(1, 40))  # first volume not at steady state
    ref = []
    for p in paths.values():
        x = nib.load(p).get_fdata()[..., 1:40]
        ref.append(x)
    mask = np.all([x[..., :31].std(axis=3) > 0 for x in ref], axis=0)
    np.testing.assert_array_equal(stats["mask"], mask)
    z = [(x[mask].T - x[mask].T[:31].mean(0)) / x[mask].T[:31].std(0, ddof=1) for x in ref]
    np.testing.assert_allclose(tensor, np.mean(z, axis=0), atol=2e-5)


def test_split_table_is_contiguous_and_validated():
    table = make_split(pd.DataFrame({"run": ["1"], "crop_start": [10], "crop_stop": [110]}),
                       fmri_spec({"a": "x"}, split={"val": 0.2, "test": 0.1}))
    assert table["split"].tolist() == ["train"] * 70 + ["val"] * 20 + ["test"] * 10
    assert table["file_tr"].iloc[0] == 10 and table["onset_s"].iloc[1] == 1.5
    broken = table.copy()
    broken.loc[5, "split"] = "test"
    with pytest.raises(ValueError, match="contiguous"):
        validate_split_table(broken)


@pytest.mark.parametrize("fields", [{}, {"mask": "lab"}, {"clean": {"detrend": True, "high_pass_hz": 0.02}},
                                    {"mode": "per_subject"}])
def test_the_second_pass_reads_the_voxels_the_first_kept_and_writes_the_same_bits(tmp_path, rng, monkeypatch,
                                                                                  fields):
    """fmri.keep_decompressed: the first pass's moments are unchanged by keeping, and the
    second pass on the kept voxels, with every file read refused, writes what it writes
    from the files."""
    import giblet_kedro.fmri.reader as reader
    from giblet_kedro.fmri.partials import Partitions, partition_name
    from giblet_kedro.pipelines.fmri.nodes import normalized_group, run_statistics, run_statistics_and_voxels

    runs = random_runs(rng, 3, grid=(6, 5, 4), n_trs=50)
    paths = {f"{i:02d}": str(write_run(tmp_path / f"sub-{i:02d}.nii.gz", d)) for i, d in enumerate(runs, 1)}
    _, split, stats, _, _ = run_stage(paths, subjects_per_group=2, **fields)
    spec = fmri_spec(paths, subjects_per_group=2, **fields)
    loaded = NiftiRunsDataset(spec.run_files).load()
    voxels = {}
    for sid, run in spec.run_keys:
        arrays, voxels[partition_name(sid, run)] = run_statistics_and_voxels(loaded, {}, {}, split, spec, sid, run)
        alone = run_statistics(loaded, {}, {}, split, spec, sid, run)
        assert arrays.keys() == alone.keys() and all(np.array_equal(arrays[k], alone[k]) for k in arrays)
    groups = Partitions(tuple(spec.run_keys), 2).groups()
    from_files = {name: normalized_group(loaded, {}, stats, split, spec, subjects, run)
                  for name, (subjects, run) in groups.items()}

    def refuse(*args):
        raise AssertionError("the file was read")

    monkeypatch.setattr(reader, "_read_ahead", refuse)
    with pytest.raises(AssertionError, match="file was read"):
        normalized_group(loaded, {}, stats, split, spec, *next(iter(groups.values())))
    for name, (subjects, run) in groups.items():
        mine = {key: copy for key, copy in voxels.items() if key.startswith(tuple(f"sub-{s}_" for s in subjects))}
        kept = normalized_group(loaded, {}, stats, split, spec, subjects, run, **mine)
        assert [a.tobytes() for a in kept] == [a.tobytes() for a in from_files[name]], name

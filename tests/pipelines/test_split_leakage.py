"""Nothing from val or test TRs reaches training: gaps between the blocks, cleaning block
by block, statistics from training TRs only. Checked by changing only the test TRs of a
raw file (and of its confound table) and comparing bit for bit."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn import signal

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.split import blocks, split_table
from giblet_kedro.pipelines.fmri.nodes import make_split
from giblet_kedro.spec.schema import FmriSpec
from tests.conftest import write_run
from tests.pipelines.test_fmri_nodes import run_stage

N_TRS = 120


def drifting_runs(tmp_path, rng, n_subjects=3):
    """Float32 runs (no scale factors: a changed TR must not rescale the others) with
    drift, motion-driven artefacts and a shared signal; SPM-style motion tables."""
    paths, tables, data = {}, {}, {}
    for index in range(1, n_subjects + 1):
        sid = f"{index:02d}"
        motion = rng.standard_normal((N_TRS, 6)).cumsum(0)
        values = (1000 + np.linspace(0, 40, N_TRS)[:, None] + motion @ rng.standard_normal((6, 60)) * 3
                  + 10 * rng.standard_normal((N_TRS, 60)))
        data[sid] = values
        paths[sid] = str(write_run(tmp_path / f"sub-{sid}.nii.gz", values.T.reshape(5, 4, 3, N_TRS), dtype=np.float32))
        tables[sid] = tmp_path / f"rp_{sid}.txt"
        np.savetxt(tables[sid], motion)
    return paths, tables, data


CLEAN = {"detrend": True, "high_pass_hz": 0.01, "confounds": None}


@pytest.mark.parametrize("change", ["test", "val"])
def test_changing_later_trs_leaves_every_earlier_row_and_every_statistic_bit_identical(tmp_path, rng, change):
    paths, tables, data = drifting_runs(tmp_path, rng)
    clean = {**CLEAN, "confounds": {"files": {sid: str(t) for sid, t in tables.items()}}}
    settings = {"clean": clean, "split": {"val": 0.15, "test": 0.15, "gap_trs": "auto"}}  # 10 TRs at 1.5 s
    _, split, stats, tensor, _, report = run_stage(paths, with_report=True, **settings)
    labels = split["split"].astype(str).to_numpy()
    assert labels.tolist() == ["train"] * 64 + ["gap"] * 10 + ["val"] * 18 + ["gap"] * 10 + ["test"] * 18

    changed = labels == change
    for sid in ("01", "03"):  # new brain data and new motion rows on those TRs only
        values = data[sid].copy()
        values[changed] += rng.normal(0, 500, size=(changed.sum(), values.shape[1]))
        write_run(tmp_path / f"sub-{sid}.nii.gz", values.T.reshape(5, 4, 3, N_TRS), dtype=np.float32)
        motion = np.loadtxt(tables[sid])
        motion[changed] += rng.normal(0, 3, size=(changed.sum(), 6))
        np.savetxt(tables[sid], motion)
    _, _, stats_after, tensor_after, _, report_after = run_stage(paths, with_report=True, **settings)

    earlier = labels == "train" if change == "test" else np.isin(labels, ["train"])
    assert np.array_equal(tensor[earlier], tensor_after[earlier])  # bit for bit
    if change == "test":
        val = labels == "val"
        assert np.array_equal(tensor[val], tensor_after[val])  # test TRs never reach val rows either
    assert not np.allclose(tensor[changed], tensor_after[changed])
    assert stats.keys() == stats_after.keys()
    for key in stats:
        assert np.array_equal(stats[key], stats_after[key]), key
    assert report == report_after

    # the shipped cleaning (the whole run at once) let the change into training rows
    x = data["01"]
    whole = signal.clean(x, detrend=True, standardize=None, high_pass=0.01, t_r=1.5)
    moved = x.copy()
    moved[changed] += 500.0
    assert not np.allclose(signal.clean(moved, detrend=True, standardize=None, high_pass=0.01, t_r=1.5)[:64],
                           whole[:64])


def table(start: int, stop: int) -> pd.DataFrame:
    return pd.DataFrame({"run": ["1"], "crop_start": [start], "crop_stop": [stop]})


def test_gaps_separate_the_blocks_by_the_hrfs_extent():
    spec = FmriSpec(subjects={"a": "x"}, tr=2.0, split={"val": 0.1, "test": 0.1})
    labels = make_split(table(0, 200), spec)["split"].astype(str).tolist()
    assert labels == ["train"] * 144 + ["gap"] * 8 + ["val"] * 20 + ["gap"] * 8 + ["test"] * 20  # ceil(15 / 2)
    no_test = FmriSpec(subjects={"a": "x"}, tr=1.5, split={"val": 0.1, "test": 0.0, "gap_trs": 4})
    assert make_split(table(0, 100), no_test)["split"].astype(str).tolist() == \
        ["train"] * 86 + ["gap"] * 4 + ["val"] * 10


def test_an_automatic_gap_shrinks_to_fit_a_short_run_and_says_so(caplog):
    spec = FmriSpec(subjects={"a": "x"}, tr=1.5, split={"val": 0.1, "test": 0.1})
    with caplog.at_level(logging.WARNING):
        labels = make_split(table(0, 30), spec)["split"].astype(str).tolist()
    assert labels.count("train") == 4 and labels.count("gap") == 20  # 10 + 10 still fit
    with caplog.at_level(logging.WARNING):
        labels = make_split(table(0, 24), spec)["split"].astype(str).tolist()
    assert labels.count("train") >= 3 and labels.count("gap") == 2 * ((24 - 4 - 3) // 2)
    assert "too short for gaps of 10 TRs" in caplog.text


def test_an_explicit_gap_that_does_not_fit_is_an_error():
    spec = FmriSpec(subjects={"a": "x"}, tr=1.5, split={"val": 0.1, "test": 0.1, "gap_trs": 12})
    with pytest.raises(InputDataError, match=r"gap_trs = 12: 2 gap\(s\) of 12 TRs leave 0 training TRs.*gap_trs <= 10"):
        make_split(table(0, 30), spec)


def test_cleaning_blocks_join_each_gap_to_the_block_after_it():
    split = split_table(0, 40, 1.5, 0.2, 0.2, gap=3)
    assert blocks(split, "1") == [slice(0, 18), slice(18, 29), slice(29, 40)]
    assert blocks(split_table(0, 40, 1.5, 0.2, 0.0, gap=0), "1") == [slice(0, 32), slice(32, 40)]


def test_val_and_test_runs_are_normalized_with_training_statistics_only(tmp_path, rng):
    """``split.by: run``: changing the test run changes no statistic (its TRs are
    z-scored with the subject's training stats, not their own)."""
    paths = {}
    for sid in ("01", "02"):
        paths[sid] = {}
        for run in ("1", "2"):
            values = 500 + rng.standard_normal((40, 12)) * 5
            paths[sid][run] = str(write_run(tmp_path / f"{sid}-{run}.nii.gz", values.T.reshape(3, 2, 2, 40),
                                            dtype=np.float32))
    settings = {"split": {"by": "run", "val": 0.2, "test": ["2"], "gap_trs": "auto"}, "clean": {"detrend": True}}
    _, _, stats, tensor, _ = run_stage(paths, **settings)
    image = nib.load(paths["01"]["2"])
    write_run(tmp_path / "01-2.nii.gz", image.get_fdata() * 3 + 100, dtype=np.float32)
    _, _, stats_after, tensor_after, _ = run_stage(paths, **settings)
    for key in stats:
        assert np.array_equal(stats[key], stats_after[key]), key
    assert np.array_equal(tensor[:40], tensor_after[:40])

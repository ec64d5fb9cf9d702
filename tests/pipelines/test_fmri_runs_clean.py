"""Several runs per subject and confound cleaning, against independent references:
hand-computed per-run z-scores (numpy) and nilearn's ``signal.clean`` on whole arrays."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nilearn import signal

from giblet_kedro.errors import InputDataError
from tests.conftest import random_runs, write_run
from tests.pipelines.test_fmri_nodes import run_stage


def clean_by_blocks(x: np.ndarray, labels, confounds=None, **settings) -> np.ndarray:
    """nilearn's ``signal.clean`` on each contiguous block of the split on its own (a gap
    belongs to the block after it), with that block's confound rows."""
    labels = np.asarray(labels)
    starts = [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1] and labels[i - 1] != "gap"]
    out = np.empty_like(x)
    for a, b in zip(starts, [*starts[1:], len(labels)], strict=True):
        block = {"standardize": None, "confounds": None if confounds is None else confounds[a:b], **settings}
        try:
            out[a:b] = signal.clean(x[a:b], **block)
        except ValueError:  # shorter than the Butterworth padding: padded by its own length
            out[a:b] = signal.clean(x[a:b], **block, butterworth__padlen=b - a - 1)
    return out


def masked(path: str, mask: np.ndarray, crop=None) -> np.ndarray:
    """(n_trs, n_voxels) float64 of ``path`` inside ``mask``, read whole with nibabel."""
    data = nib.load(path).get_fdata()
    if crop is not None:
        data = data[..., crop[0]:crop[1]]
    return data[mask].T


@pytest.fixture
def two_runs(tmp_path, rng):
    """Two subjects x two runs (40 and 30 TRs); each run with its own baseline and gain,
    as when a scanner is restarted between sessions."""
    paths: dict[str, dict[str, str]] = {}
    for run, n_trs in (("1", 40), ("2", 30)):
        for index, data in enumerate(random_runs(rng, 2, grid=(5, 4, 3), n_trs=n_trs, background_zero=False), 1):
            scale = 1.0 if run == "1" else 1.7
            sid = f"{index:02d}"
            path = write_run(tmp_path / f"sub-{sid}_run-{run}.nii.gz", data * scale + (300 if run == "2" else 0),
                             dtype=np.float32)
            paths.setdefault(sid, {})[run] = str(path)
    return paths


def test_each_run_is_zscored_on_its_own_then_concatenated(two_runs):
    subjects, split, stats, tensor, _ = run_stage(two_runs, split={"val": 0.1, "test": 0.1})
    assert list(split["run"].unique()) == ["1", "2"] and len(split) == 70
    # blocks within each run: 32/4/4 of run 1, then 24/3/3 of run 2
    labels = split["split"].astype(str).tolist()
    assert labels == ["train"] * 32 + ["val"] * 4 + ["test"] * 4 + ["train"] * 24 + ["val"] * 3 + ["test"] * 3
    assert set(subjects["run"]) == {"1", "2"} and len(subjects) == 4

    mask = stats["mask"]
    expected = []
    for sid, runs in two_runs.items():
        parts = []
        pooled = []
        for run, n_train in (("1", 32), ("2", 24)):
            x = masked(runs[run], mask)
            mean, std = x[:n_train].mean(0), x[:n_train].std(0, ddof=1)
            np.testing.assert_allclose(stats[f"subject_{sid}_run_{run}_mean"], mean, rtol=1e-6)
            np.testing.assert_allclose(stats[f"subject_{sid}_run_{run}_std"], std, rtol=1e-5)
            parts.append((x - mean) / std)
            pooled.append(x[:n_train])
        # runs without training TRs get the subject's stats: the mean over all its training
        # TRs, the std from the within-run variance pooled over its training runs
        both = np.concatenate(pooled)
        within = sum(((p - p.mean(0)) ** 2).sum(0) for p in pooled) / (len(both) - len(pooled))
        np.testing.assert_allclose(stats[f"subject_{sid}_mean"], both.mean(0), rtol=1e-6)
        np.testing.assert_allclose(stats[f"subject_{sid}_std"], np.sqrt(within), rtol=1e-5)
        assert (np.sqrt(within) < both.std(0, ddof=1)).mean() > 0.9  # run 2's offset and gain left out
        expected.append(np.concatenate(parts))
    np.testing.assert_allclose(tensor, np.mean(expected, axis=0), atol=2e-5)
    assert list(stats["train_trs"]) == [*range(32), *range(40, 64)]
    assert list(stats["run_2_crop"]) == [0, 30]


def test_split_by_run_holds_out_whole_runs(two_runs):
    _, split, stats, tensor, _ = run_stage(two_runs, split={"by": "run", "val": [], "test": ["2"]},
                                           mode="per_subject")
    assert (split.loc[split["run"] == "1", "split"] == "train").all()
    assert (split.loc[split["run"] == "2", "split"] == "test").all()
    assert list(stats["run_2_stats_trs"]) == []  # a test run contributes no statistic
    assert "within-run variance" in str(stats["heldout_policy"])
    for index, (sid, runs) in enumerate(two_runs.items()):
        x1, x2 = masked(runs["1"], stats["mask"]), masked(runs["2"], stats["mask"])
        # the test run is z-scored with the subject's training stats (run 1), never its own
        mean, std = x1.mean(0), x1.std(0, ddof=1)
        np.testing.assert_allclose(stats[f"subject_{sid}_mean"], mean, rtol=1e-6)
        np.testing.assert_allclose(stats[f"subject_{sid}_run_2_std"], std, rtol=1e-5)
        np.testing.assert_allclose(tensor[index, 40:], (x2 - mean) / std, atol=2e-5)


def test_split_by_run_with_a_validation_fraction_of_the_training_runs(two_runs):
    _, split, _, _, _ = run_stage(two_runs, split={"by": "run", "val": 0.25, "test": ["2"]})
    assert split["split"].astype(str).tolist() == ["train"] * 30 + ["val"] * 10 + ["test"] * 30


def test_per_run_crops(two_runs):
    _, split, stats, tensor, _ = run_stage(two_runs, runs={"1": {"trs": [5, 40]}, "2": {"trs": [0, 20]}},
                                           split={"val": 0.2, "test": 0.0})
    assert tensor.shape[0] == 35 + 20
    assert split.loc[split["run"] == "1", "file_tr"].iloc[0] == 5
    assert list(stats["run_1_crop"]) == [5, 40] and list(stats["run_2_crop"]) == [0, 20]


def test_a_run_too_short_for_its_crop_is_named(two_runs):
    with pytest.raises(InputDataError, match=r"fmri.runs\['2'\].trs asks for TRs \[0, 35\).*subject '01' run '2' has 30"):
        run_stage(two_runs, runs={"2": {"trs": [0, 35]}})


# ------------------------------------------------------------------- cleaning
def planted_confound_runs(tmp_path, rng, n_trs=80, n_subjects=2):
    """Runs whose voxels = baseline + drift + motion @ loading + signal, and the motion
    tables (as SPM writes them: no header, one row per volume)."""
    paths, tables = {}, {}
    for index in range(1, n_subjects + 1):
        sid = f"{index:02d}"
        motion = rng.standard_normal((n_trs, 6)).cumsum(0)
        loading = rng.standard_normal((6, 5 * 4 * 3))
        signal_part = rng.standard_normal((n_trs, 60))
        drift = np.linspace(0, 30, n_trs)[:, None]
        data = 1000 + drift + motion @ loading * 5 + 10 * signal_part
        paths[sid] = str(write_run(tmp_path / f"sub-{sid}.nii.gz", data.T.reshape(5, 4, 3, n_trs), dtype=np.float32))
        table = tmp_path / f"rp_{sid}.txt"
        np.savetxt(table, motion)
        tables[sid] = str(table)
    return paths, tables


@pytest.mark.parametrize("clean", [
    {"detrend": True},
    {"detrend": True, "high_pass_hz": 0.01},
    {"detrend": False, "high_pass_hz": 0.02, "filter": "cosine"},
    {"detrend": True, "high_pass_hz": 0.01, "low_pass_hz": 0.2, "confounds": "rp"},
])
def test_cleaning_equals_nilearn_signal_clean(tmp_path, rng, clean):
    paths, tables = planted_confound_runs(tmp_path, rng)
    clean = dict(clean)
    if clean.get("confounds") == "rp":
        clean["confounds"] = {"files": tables}
    _, split, stats, tensor, _, report = run_stage(paths, clean=clean, trs=(2, 80), with_report=True,
                                                   split={"val": 0.25, "test": 0.25})
    n_train = int((split["split"] == "train").sum())
    expected = []
    for sid, path in paths.items():
        x = masked(path, stats["mask"], crop=(2, 80))
        conf = np.loadtxt(tables[sid])[2:80] if "confounds" in clean else None
        cleaned = clean_by_blocks(x, split["split"].astype(str), conf, detrend=clean["detrend"], t_r=1.5,
                                  high_pass=clean.get("high_pass_hz"), low_pass=clean.get("low_pass_hz"),
                                  filter=clean.get("filter", "butterworth") if "high_pass_hz" in clean else False)
        mean, std = cleaned[:n_train].mean(0), cleaned[:n_train].std(0, ddof=1)
        np.testing.assert_allclose(stats[f"subject_{sid}_std"], std, rtol=1e-4)
        expected.append((cleaned - mean) / std)
        raw = x[:n_train].var(0, ddof=1)
        entry = next(e for e in report["runs"] if e["subject"] == sid)
        assert entry["variance_removed"] == pytest.approx(1 - (std**2).sum() / raw.sum(), rel=1e-4)
    np.testing.assert_allclose(tensor, np.mean(expected, axis=0), atol=1e-4)


def test_a_block_shorter_than_the_butterworth_padding_is_padded_by_its_own_length(tmp_path, rng):
    paths, _ = planted_confound_runs(tmp_path, rng)
    _, split, stats, tensor, _ = run_stage(paths, clean={"detrend": True, "high_pass_hz": 0.01})  # 8-TR val/test
    x = masked(paths["01"], stats["mask"])
    test = slice(72, 80)
    cleaned = signal.clean(x[test], detrend=True, standardize=None, t_r=1.5, high_pass=0.01,
                           butterworth__padlen=7)
    subject = tensor  # 2 subjects averaged; compare one subject through its own statistics instead
    assert subject.shape[0] == 80 and (split["split"].iloc[test] == "test").all()
    train = signal.clean(x[:64], detrend=True, standardize=None, t_r=1.5, high_pass=0.01)
    np.testing.assert_allclose(stats["subject_01_std"], train.std(0, ddof=1), rtol=1e-4)
    own = (cleaned - train.mean(0)) / train.std(0, ddof=1)
    other = masked(paths["02"], stats["mask"])
    other_train = signal.clean(other[:64], detrend=True, standardize=None, t_r=1.5, high_pass=0.01)
    other_test = signal.clean(other[test], detrend=True, standardize=None, t_r=1.5, high_pass=0.01,
                              butterworth__padlen=7)
    expected = (own + (other_test - other_train.mean(0)) / other_train.std(0, ddof=1)) / 2
    np.testing.assert_allclose(tensor[test], expected, atol=1e-4)


def test_confound_regression_removes_the_planted_motion(tmp_path, rng):
    paths, tables = planted_confound_runs(tmp_path, rng)
    *_, report = run_stage(paths, clean={"detrend": True, "confounds": {"files": tables}}, with_report=True)
    *_, plain_report = run_stage(paths, clean={"detrend": True}, with_report=True)
    with_motion = {e["subject"]: e["variance_removed"] for e in report["runs"]}
    detrend_only = {e["subject"]: e["variance_removed"] for e in plain_report["runs"]}
    for sid in paths:  # motion carries most of the planted variance
        assert with_motion[sid] > 0.8 > detrend_only[sid]


def test_cleaning_off_by_default_reports_nothing(tmp_path, rng):
    paths, _ = planted_confound_runs(tmp_path, rng)
    *_, report = run_stage(paths, with_report=True)
    assert report == {"clean": None, "runs": []}


def test_a_confound_table_for_another_run_is_rejected(tmp_path, rng):
    paths, tables = planted_confound_runs(tmp_path, rng)
    np.savetxt(tables["02"], np.zeros((70, 6)))
    with pytest.raises(InputDataError, match=r"subject '02'.*70 rows but the run has 80 volumes; it needs one row"):
        run_stage(paths, clean={"confounds": {"files": tables}})


def test_unknown_confound_columns_are_listed(tmp_path, rng):
    paths, tables = planted_confound_runs(tmp_path, rng)
    with pytest.raises(InputDataError, match=r"confound columns \['7'\] are not in the table; its columns are"):
        run_stage(paths, clean={"confounds": {"files": tables, "columns": [0, 7]}})


def test_a_filter_above_nyquist_is_rejected(tmp_path, rng):
    paths, _ = planted_confound_runs(tmp_path, rng)
    with pytest.raises(InputDataError, match=r"high_pass_hz = 0.5 Hz is at or above the Nyquist"):
        run_stage(paths, clean={"high_pass_hz": 0.5})


def test_heldout_runs_are_cleaned_like_training_runs(tmp_path, rng):
    paths, tables = planted_confound_runs(tmp_path, rng)
    clean = {"detrend": True, "confounds": {"files": tables, "heldout": {"01": tables["01"]}}}
    _, split, stats, _, held = run_stage(paths, clean=clean, heldout={"01": paths["01"]})
    n_train = int((split["split"] == "train").sum())
    x = masked(paths["01"], stats["mask"])
    motion = np.loadtxt(tables["01"])
    cleaned = signal.clean(x, detrend=True, standardize=None, confounds=motion, t_r=1.5)  # all test: whole
    # the training statistics, by hand: the training block cleaned on its own
    train = signal.clean(x[:n_train], detrend=True, standardize=None, confounds=motion[:n_train], t_r=1.5)
    mean, std = train.mean(0), train.std(0, ddof=1)
    np.testing.assert_allclose(held["subject_01"], (cleaned - mean) / std, atol=1e-4)


# ------------------------------------------------------------ real data: Alice
def alice_with_motion(alice_dir, tmp_path, ids):
    """Alice subjects as (6, 1, 1, 362) NIfTI, with their SPM motion tables (372 rows:
    the first 10 volumes were dropped from the brain data only)."""
    paths, tables = {}, {}
    for sid in ids:
        series = np.loadtxt(alice_dir / f"{sid}-timecourses.txt")  # (362, 6)
        paths[sid] = str(write_run(tmp_path / f"{sid}.nii.gz", series.T[:, None, None, :], tr=2.0, dtype=np.float32))
        tables[sid] = str(next(alice_dir.glob(f"{sid}-rp_*.txt")))
    return paths, tables


def test_alice_motion_needs_the_offset_of_10(alice_dir, tmp_path):
    paths, tables = alice_with_motion(alice_dir, tmp_path, ["s18", "s22"])
    with pytest.raises(InputDataError, match=r"s18.*372 rows but the run has 362 volumes.*skip_rows: 10"):
        run_stage(paths, tr=2.0, clean={"confounds": {"files": tables}})
    with pytest.raises(InputDataError, match=r"skipping 9 leaves 363.*accepted: skip_rows = 10"):
        run_stage(paths, tr=2.0, clean={"confounds": {"files": tables, "skip_rows": 9}})


def test_alice_motion_cleaning_uses_rows_10_onwards(alice_dir, tmp_path):
    """Real ROI data plus a planted motion artefact built from motion rows 10..371: cleaning
    with skip_rows 10 removes the artefact exactly (as nilearn does on the aligned rows),
    and a one-row misalignment would not."""
    ids = ["s18", "s22", "s23"]
    rng = np.random.default_rng(7)
    paths, tables = {}, {}
    real = {}
    for sid in ids:
        series = np.loadtxt(alice_dir / f"{sid}-timecourses.txt")  # (362, 6)
        motion = np.loadtxt(next(alice_dir.glob(f"{sid}-rp_*.txt")))  # (372, 6)
        artefact = motion[10:] @ rng.standard_normal((6, 6)) * series.std(0) * 5
        real[sid] = series
        paths[sid] = str(write_run(tmp_path / f"{sid}.nii.gz", (series + artefact).T[:, None, None, :], tr=2.0,
                                   dtype=np.float32))
        tables[sid] = str(next(alice_dir.glob(f"{sid}-rp_*.txt")))
    _, split, stats, tensor, _ = run_stage(paths, tr=2.0,
                                           clean={"detrend": True, "confounds": {"files": tables, "skip_rows": 10}})
    n_train = int((split["split"] == "train").sum())
    labels = split["split"].astype(str)
    expected = []
    for sid in ids:
        motion = np.loadtxt(tables[sid])
        aligned = clean_by_blocks(real[sid], labels, motion[10:], detrend=True, t_r=2.0)
        shifted = clean_by_blocks(real[sid], labels, motion[9:371], detrend=True, t_r=2.0)
        assert not np.allclose(aligned, shifted, atol=1e-3)  # the offset matters
        np.testing.assert_allclose(stats[f"subject_{sid}_std"], aligned[:n_train].std(0, ddof=1), rtol=1e-3)
        expected.append((aligned - aligned[:n_train].mean(0)) / aligned[:n_train].std(0, ddof=1))
    np.testing.assert_allclose(tensor, np.mean(expected, axis=0), atol=2e-3)

"""``fmri.bids``: subjects, runs, TR and confounds found in a BIDS tree built here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from giblet_kedro.errors import InputDataError, SpecError
from giblet_kedro.spec.compile import compile_spec
from giblet_kedro.spec.load import parse_spec
from tests.conftest import write_run

TASK = "movie"


def bids_tree(root, subjects=("01", "02"), runs=("1", "2"), tr=1.5, spaces=("MNI152NLin2009cAsym",),
              sidecar="run", confounds=True, n_trs=30):
    """An fMRIPrep-like derivatives folder: per subject and run a preprocessed BOLD per
    space, its JSON sidecar, and the run's confounds TSV (``n/a`` in the first row of the
    derivative columns, as fMRIPrep writes)."""
    rng = np.random.default_rng(0)
    for sid in subjects:
        func = root / f"sub-{sid}" / "func"
        for run in runs:
            base = f"sub-{sid}_task-{TASK}_run-{run}"
            for space in spaces:
                stem = f"{base}_space-{space}_desc-preproc"
                write_run(func / f"{stem}_bold.nii.gz", 100 + rng.standard_normal((3, 3, 2, n_trs)), tr=tr,
                          dtype=np.float32)
                if sidecar == "run":
                    (func / f"{stem}_bold.json").write_text(json.dumps({"RepetitionTime": tr, "SkullStripped": True}))
            if confounds:
                table = pd.DataFrame(rng.standard_normal((n_trs, 3)), columns=["trans_x", "trans_y", "rot_z"])
                table["trans_x_derivative1"] = np.r_[np.nan, np.diff(table["trans_x"])]
                table.to_csv(func / f"{base}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    if sidecar == "root":
        (root / f"task-{TASK}_bold.json").write_text(json.dumps({"RepetitionTime": tr}))
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.8.0"}))
    return root


def spec_text(root, extra_fmri="", bids_extra="space: MNI152NLin2009cAsym"):
    return (f"name: bids_test\nfmri:\n  bids: {{root: {root}, task: {TASK}, {bids_extra}}}\n"
            f"  split: {{by: run, val: [], test: ['2']}}\n{extra_fmri}")


def compiled(root, **kwargs):
    spec = parse_spec(spec_text(root, **kwargs))
    return compile_spec(spec, root / "spec.yml").spec


def test_subjects_runs_and_tr_come_from_the_folder(tmp_path):
    root = bids_tree(tmp_path / "derivatives")
    spec = compiled(root)
    assert spec.fmri.subject_ids == ["01", "02"] and spec.fmri.run_ids == ["1", "2"]
    assert spec.fmri.tr == 1.5
    files = spec.fmri.subject_files()
    assert files["02"]["2"].endswith("sub-02/func/sub-02_task-movie_run-2_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    assert spec.fmri.bids is None  # replaced by what it found


def test_task_level_sidecar_is_inherited(tmp_path):
    root = bids_tree(tmp_path / "bids", sidecar="root", tr=2.0)
    assert compiled(root).fmri.tr == 2.0


def test_tr_in_spec_is_cross_checked_with_the_sidecar(tmp_path):
    root = bids_tree(tmp_path / "bids")
    with pytest.raises(InputDataError, match=r"fmri.tr is 2 s but the sidecar .*_bold.json says RepetitionTime 1.5 s"):
        compiled(root, extra_fmri="  tr: 2.0\n")


def test_no_sidecar_and_no_tr_is_an_error(tmp_path):
    root = bids_tree(tmp_path / "bids", sidecar=None)
    with pytest.raises(InputDataError, match=r"no sidecar JSON .* gives RepetitionTime; give fmri.tr"):
        compiled(root)
    assert compiled(root, extra_fmri="  tr: 1.5\n").fmri.tr == 1.5


def test_two_spaces_without_a_choice_are_ambiguous(tmp_path):
    root = bids_tree(tmp_path / "bids", spaces=("MNI152NLin2009cAsym", "T1w"))
    with pytest.raises(InputDataError, match=r"subject '01' run '1' is ambiguous: .*space-MNI152NLin2009cAsym.*"
                                             r"space-T1w.*give fmri.bids.space"):
        compiled(root, bids_extra="desc: preproc")
    assert compiled(root, bids_extra="space: T1w").fmri.subject_files()["01"]["1"].endswith("space-T1w_desc-preproc_bold.nii.gz")


def test_no_match_lists_what_was_found(tmp_path):
    root = bids_tree(tmp_path / "bids")
    with pytest.raises(InputDataError, match=r"no BOLD run .* matches task='movie', space='MNI305'; found 4 BOLD files: "
                                             r"sub-01_task-movie_run-1"):
        compiled(root, bids_extra="space: MNI305")


def test_subjects_with_different_runs_are_named(tmp_path):
    root = bids_tree(tmp_path / "bids")
    for path in (root / "sub-02" / "func").glob("*run-2*"):
        path.unlink()
    with pytest.raises(InputDataError, match=r"subject '02' has runs \['1'\] but subject '01' has \['1', '2'\]"):
        compiled(root)


def test_requested_subjects_must_exist(tmp_path):
    root = bids_tree(tmp_path / "bids")
    with pytest.raises(InputDataError, match=r"fmri.bids.subjects \['07'\] not found .* found subjects \['01', '02'\]"):
        compiled(root, bids_extra="space: MNI152NLin2009cAsym, subjects: ['01', '07']")
    assert compiled(root, bids_extra="space: MNI152NLin2009cAsym, subjects: ['02']").fmri.subject_ids == ["02"]


def test_confounds_are_found_by_their_bids_names(tmp_path):
    root = bids_tree(tmp_path / "bids")
    spec = compiled(root, extra_fmri="  clean: {confounds: {columns: [trans_x, trans_y, rot_z, trans_x_derivative1]}}\n")
    tables = spec.fmri.confound_table_files()
    assert tables["01"]["2"].endswith("sub-01/func/sub-01_task-movie_run-2_desc-confounds_timeseries.tsv")


def test_a_missing_confound_table_lists_what_is_there(tmp_path):
    root = bids_tree(tmp_path / "bids", confounds=False)
    with pytest.raises(InputDataError, match=r"no confound table for sub-01_task-movie_run-1_space-.*looked for "
                                             r"\['sub-01_task-movie_run-1_desc-confounds_timeseries.tsv'"):
        compiled(root, extra_fmri="  clean: {confounds: {}}\n")


def test_bids_experiment_runs_through_the_fmri_nodes(tmp_path):
    """The found runs and confounds (with fMRIPrep's n/a row) go through the real nodes."""
    from giblet_kedro.datasets.confounds import ConfoundTablesDataset
    from giblet_kedro.datasets.nifti import NiftiRunsDataset
    from giblet_kedro.pipelines.fmri.nodes import build_fmri_tensor, compute_norm_stats, inspect_runs, make_split

    root = bids_tree(tmp_path / "bids")
    fmri = compiled(root, extra_fmri="  clean: {detrend: true, confounds: {columns: [trans_x, trans_x_derivative1]}}\n").fmri
    runs = NiftiRunsDataset(fmri.run_files).load()
    confounds = ConfoundTablesDataset(fmri.confound_files).load()
    split = make_split(inspect_runs(runs, fmri), fmri)
    stats, report = compute_norm_stats(runs, {}, confounds, split, fmri)
    tensor, _ = build_fmri_tensor(runs, confounds, stats, split, fmri)
    assert tensor.shape == (60, 18) and np.isfinite(tensor).all()
    assert len(report["runs"]) == 2 and all(0 < r["variance_removed"] < 1 for r in report["runs"])  # training runs


def test_sidecar_tr_is_cross_checked_with_the_nifti_header(tmp_path):
    """The sidecar says 2 s but the images say 1.5 s: the header check names the run."""
    from giblet_kedro.datasets.nifti import NiftiRunsDataset
    from giblet_kedro.pipelines.fmri.nodes import inspect_runs

    root = bids_tree(tmp_path / "bids", sidecar=None)
    (root / f"task-{TASK}_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    fmri = compiled(root).fmri
    assert fmri.tr == 2.0
    with pytest.raises(InputDataError, match=r"subject '01' run '1'.*header TR is 1.5 sec but fmri.tr is 2 s"):
        inspect_runs(NiftiRunsDataset(fmri.run_files).load(), fmri)


def fmriprep_confounds(func, base, n_trs, rng, high_motion=()):
    """A confounds TSV with the columns fMRIPrep writes and nilearn's strategies read: 24
    motion parameters, WM/CSF/global signal with their expansions, framewise displacement,
    DVARS and cosine regressors."""
    columns = {}
    for name in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "white_matter", "csf", "global_signal"):
        values = rng.standard_normal(n_trs)
        derivative = np.r_[np.nan, np.diff(values)]
        columns |= {name: values, f"{name}_derivative1": derivative, f"{name}_power2": values ** 2,
                    f"{name}_derivative1_power2": derivative ** 2}
    fd = np.abs(rng.normal(0.1, 0.02, n_trs))
    fd[list(high_motion)] = 2.0
    fd[0] = np.nan
    columns |= {"framewise_displacement": fd, "std_dvars": np.r_[np.nan, rng.normal(1, 0.1, n_trs - 1)],
                "cosine00": np.cos(np.pi * (np.arange(n_trs) + 0.5) / n_trs)}
    pd.DataFrame(columns).to_csv(func / f"{base}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")


def _strategy_stage(root, clean, everything=False):
    from giblet_kedro.datasets.confounds import ConfoundTablesDataset
    from giblet_kedro.datasets.nifti import NiftiRunsDataset
    from giblet_kedro.pipelines.fmri.nodes import build_fmri_tensor, compute_norm_stats, inspect_runs, make_split

    fmri = compiled(root, extra_fmri=f"  clean: {clean}\n").fmri
    confounds_spec = fmri.clean.confounds
    runs = NiftiRunsDataset(fmri.run_files).load()
    confounds = ConfoundTablesDataset(fmri.confound_files, images=fmri.run_files, strategy=confounds_spec.strategy,
                                      strategy_options=confounds_spec.strategy_options).load()
    split = make_split(inspect_runs(runs, fmri), fmri)
    stats, _ = compute_norm_stats(runs, {}, confounds, split, fmri)
    tensor, covered = build_fmri_tensor(runs, confounds, stats, split, fmri)
    if everything:
        return tensor, covered, stats, split, confounds
    return tensor, confounds


def test_an_fmriprep_strategy_cleans_with_exactly_the_columns_nilearn_chooses(tmp_path):
    """strategy: simple (nilearn's load_confounds_strategy: 24 motion parameters, WM and CSF,
    the cosine high-pass) gives the tensor that naming those columns by hand gives, on the
    values nilearn returns (it fills fMRIPrep's n/a rows its own way)."""
    root = bids_tree(tmp_path / "bids", confounds=False)
    rng = np.random.default_rng(3)
    for func in root.glob("sub-*/func"):
        for run in ("1", "2"):
            fmriprep_confounds(func, f"{func.parent.name}_task-{TASK}_run-{run}", 30, rng)
    tensor, tables = _strategy_stage(root, "{detrend: true, confounds: {strategy: simple}}")
    chosen = list(next(iter(tables.values())).columns)
    assert len([c for c in chosen if c.startswith(("trans", "rot"))]) == 24
    assert {"white_matter", "csf", "cosine00"} <= set(chosen) and "global_signal" not in chosen
    for key, path in compiled(root, extra_fmri="  clean: {confounds: {strategy: simple}}\n").fmri.confound_files.items():
        tables[key].to_csv(path, sep="\t", index=False)  # nilearn's values, under fMRIPrep's file names
    by_hand, _ = _strategy_stage(root, f"{{detrend: true, confounds: {{columns: {chosen}}}}}")
    np.testing.assert_allclose(tensor, by_hand, atol=1e-5)


SCRUB = ("{detrend: true, confounds: {strategy: scrubbing, strategy_options: {motion: basic, wm_csf: basic, "
         "scrub: 0, fd_threshold: 0.5, std_dvars_threshold: 100}}}")


def _scrubbed_tree(tmp_path, motion):
    """The BIDS tree with fMRIPrep confounds whose framewise displacement is high at
    ``motion[(subject, run)]`` volumes."""
    root = bids_tree(tmp_path / "bids", confounds=False)
    rng = np.random.default_rng(4)
    for func in sorted(root.glob("sub-*/func")):
        sid = func.parent.name.removeprefix("sub-")
        for run in ("1", "2"):
            fmriprep_confounds(func, f"sub-{sid}_task-{TASK}_run-{run}", 30, rng, high_motion=motion.get((sid, run), ()))
    return root


def _by_hand(root, fmri, confounds, sid, run, stats, ddof):
    """One run cleaned by nilearn's own signal.clean with the strategy's confounds and
    sample_mask, z-scored with numpy (training stats of run 1 over its kept TRs):
    (n_trs, V) with NaN rows at censored volumes."""
    import nibabel as nib
    from nilearn import signal

    table = confounds[f"{sid}/{run}"]
    kept = table.attrs["sample_mask"]
    data = np.asarray(nib.load(fmri.run_files[f"{sid}/{run}"]).get_fdata())[stats["mask"]].T  # (n_trs, V) C order
    cleaned = signal.clean(data, detrend=True, standardize=None, confounds=table.to_numpy(), filter=False, t_r=1.5,
                           sample_mask=None if kept is None else np.asarray(kept))
    out = np.full(data.shape, np.nan)
    out[np.arange(data.shape[0]) if kept is None else np.asarray(kept)] = cleaned
    return out


def test_censored_volumes_are_dropped_from_the_stats_the_cleaning_and_the_tensor(tmp_path):
    """scrubbing censors volumes 1 and 17 of subject 01's training run and volume 4 of
    subject 02's test run: the statistics are numpy's over the kept TRs of nilearn's own
    censored cleaning, the average at a censored TR is the other subject's value, and
    the test rows lose TR 4 of run 2 (scored with every subject)."""
    from giblet_kedro.fmri import censor
    from giblet_kedro.training.job import job_rows

    root = _scrubbed_tree(tmp_path, {("01", "1"): (1, 17), ("02", "2"): (4,)})
    fmri = compiled(root, extra_fmri=f"  clean: {SCRUB}\n").fmri
    tensor, covered, stats, split, confounds = _strategy_stage(root, SCRUB, everything=True)
    assert stats["subject_01_run_1_censored"].tolist() == [1, 17]
    assert stats["subject_02_run_2_censored"].tolist() == [4]
    assert "subject_02_run_1_censored" not in stats
    np.testing.assert_array_equal(covered, censor.coverage(stats))
    assert np.flatnonzero(~covered[0]).tolist() == [1, 17] and np.flatnonzero(~covered[1]).tolist() == [34]

    ddof = int(stats["ddof"])
    z = {}
    for sid in ("01", "02"):
        train = _by_hand(root, fmri, confounds, sid, "1", stats, ddof)
        kept = train[~np.isnan(train).any(axis=1)]
        np.testing.assert_allclose(stats[f"subject_{sid}_run_1_mean"], kept.mean(0), atol=1e-5)  # float32 cleaning
        np.testing.assert_allclose(stats[f"subject_{sid}_run_1_std"], kept.std(0, ddof=ddof), rtol=1e-5)
        z[sid] = (train - kept.mean(0)) / kept.std(0, ddof=ddof)
    expected = np.nanmean(np.stack([z["01"], z["02"]]), axis=0)  # row 1 and 17: subject 02 alone
    np.testing.assert_allclose(tensor[:30], expected, atol=1e-4)
    np.testing.assert_allclose(tensor[[1, 17]], z["02"][[1, 17]], atol=1e-4)

    rows = job_rows(split, covered)
    assert rows["train"].tolist() == list(range(30))  # subject 02 covers 1 and 17
    assert rows["test"].tolist() == [r for r in range(30, 60) if r != 34]
    assert censor.usable_rows(split, censor.coverage(stats), "test").tolist() == rows["test"].tolist()


def test_a_spike_in_a_censored_volume_reaches_nothing(tmp_path):
    """A motion spike (+1e4) planted in a volume the strategy censors changes neither the
    statistics nor any row of the tensor; with a strategy that does not censor, the same
    spike does change them (the check can fail)."""
    import nibabel as nib

    root = _scrubbed_tree(tmp_path, {("01", "1"): (1, 17)})
    path = next(root.glob("sub-01/func/sub-01_task-movie_run-1_*_bold.nii.gz"))

    def spiked(value):
        image = nib.load(path)
        data = np.asarray(image.get_fdata())
        data[..., 17] += value
        write_run(path, data, tr=1.5, dtype=np.float32)

    simple = "{detrend: true, confounds: {strategy: simple, strategy_options: {motion: basic, wm_csf: basic}}}"
    before = {name: _strategy_stage(root, clean, everything=True)[:3] for name, clean in (("scrub", SCRUB),
                                                                                           ("simple", simple))}
    spiked(1e4)
    after = {name: _strategy_stage(root, clean, everything=True)[:3] for name, clean in (("scrub", SCRUB),
                                                                                          ("simple", simple))}
    np.testing.assert_allclose(after["scrub"][0], before["scrub"][0], atol=1e-4)
    np.testing.assert_allclose(after["scrub"][2]["subject_01_run_1_std"], before["scrub"][2]["subject_01_run_1_std"],
                               rtol=1e-6)
    assert np.abs(after["simple"][0] - before["simple"][0]).max() > 1.0


def test_strategy_errors_are_named(tmp_path):
    root = bids_tree(tmp_path / "bids", confounds=False)
    with pytest.raises(SpecError, match="strategy: simple chooses the confound columns; leave 'columns' out"):
        parse_spec(spec_text(root, extra_fmri="  clean: {confounds: {strategy: simple, columns: [csf]}}\n"))


@pytest.mark.parametrize("mode", ["cross_subject", "per_subject"])
@pytest.mark.parametrize("group_size", [1, 4])
def test_the_map_reduce_stage_writes_bitwise_the_single_process_tensor(tmp_path, mode, group_size):
    """The pipeline's map-reduce (each group's normalized runs summed or stacked per run,
    saved and read back as memory maps, then combined) equals the single-process
    streaming tensor bitwise, with two runs, cleaning and censored volumes, in one group
    or in one group per subject; the inter-subject pass's val and test rows kept by the
    map are the per-subject data's rows."""
    from giblet_kedro.datasets.arrays import NpyDataset
    from giblet_kedro.fmri.partials import Partitions, subject_rows
    from giblet_kedro.pipelines.fmri.nodes import build_fmri_tensor, combine_normalized, normalized_group

    root = _scrubbed_tree(tmp_path, {("01", "1"): (1, 17), ("02", "2"): (4,)})
    _, _, stats, split, confounds = _strategy_stage(root, SCRUB, everything=True)
    fmri = compiled(root, extra_fmri=f"  clean: {SCRUB}\n").fmri.model_copy(
        update={"mode": mode, "subjects_per_group": group_size})
    from giblet_kedro.datasets.nifti import NiftiRunsDataset

    runs = NiftiRunsDataset(fmri.run_files).load()
    combined, kept = {}, {}
    groups = Partitions(tuple(fmri.run_keys), group_size).groups()
    assert len(groups) == 2 * (2 if group_size == 1 else 1)  # 2 runs
    for name, (subjects, run) in groups.items():
        outputs = normalized_group(runs, confounds, stats, split, fmri, subjects, run)
        for store, array, file in ((combined, outputs[0], "combined"), (kept, outputs[1], "rows")):
            dataset = NpyDataset(str(tmp_path / "partials" / name / f"{file}.npy"))
            dataset.save(array)
            store[name] = dataset.load()
    assert all(isinstance(p, np.memmap) for p in combined.values())
    expected, expected_covered = build_fmri_tensor(runs, confounds, stats, split, fmri)
    tensor, covered = combine_normalized(stats, fmri, **combined)
    assert tensor.dtype == expected.dtype and tensor.tobytes() == expected.tobytes()
    np.testing.assert_array_equal(covered, expected_covered)
    assert not covered.all()  # the censored volumes took part

    per_subject, _ = build_fmri_tensor(runs, confounds, stats, split, fmri.model_copy(update={"mode": "per_subject"}))
    rows = {which: split.index[split["split"] == which].to_numpy() for which in ("val", "test")}
    assert len(rows["test"]) == 30 and 30 + 4 in rows["test"]  # run 2 is the test run; subject 02 censored there
    picked = subject_rows(kept, stats, split, group_size, rows)
    for which in rows:
        np.testing.assert_array_equal(picked[which], per_subject[:, rows[which]])
    with pytest.raises(ValueError, match="outside the val and test rows"):
        subject_rows(kept, stats, split, group_size, {"train": split.index[split["split"] == "train"].to_numpy()})

    lost = next(iter(groups))
    del combined[lost]
    with pytest.raises(ValueError, match=rf"no normalized group for the partitions \['{lost}'\]"):
        combine_normalized(stats, fmri, **combined)

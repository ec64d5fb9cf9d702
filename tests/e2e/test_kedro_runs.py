"""Runs of the project's pipelines on throwaway projects, most of them copies of the shared
``demo_features`` build (the demo's fMRI and stimulus stages, computed once). Runs go
through ``KedroSession`` and ``kedro giblet`` through click; the real ``kedro`` command is
started only where its exit code, its message or a runner is what is tested."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import random_runs, write_run
from tests.e2e.harness import giblet, kedro, mlflow_runs, outputs, planted_square, process_ran, session_run

pytestmark = pytest.mark.e2e
MISMATCH_EPOCHS = 20  # enough for every other check to pass on the selected epoch (the demo trains 40)


def new_outputs(project: Path, source, pattern: str) -> list[Path]:
    """Outputs under ``project`` matching ``pattern`` that its source build did not have."""
    return [path for path in outputs(project, pattern) if not (source.root / path.relative_to(project)).exists()]


def _history(project: Path) -> list[dict]:
    return [json.loads(line) for line in (project / "data/.giblet/runs.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------- runs and caches
def test_the_features_build_generated_the_demo_data_through_the_hook(demo_features):
    """The shared build ran the fmri and stimulus pipelines from Python on an empty project:
    the hook generated the demo data first, then every node ran once."""
    assert {"generate_demo_data", "inspect_fmri_runs", "compute_fmri_norm_stats", "build_fmri_tensor",
            "extract_video_frames", "extract_audio_codes", "extract_text_embeddings",
            "check_stimulus_alignment"} <= demo_features.ran
    assert len(list(demo_features.root.glob("data/01_raw/demo/*/movie.mp4"))) == 1


def test_caches_are_reused_and_an_override_recomputes_only_what_reads_it(demo_features, copy_of):
    """From Python, as a notebook runs: nothing recomputes on a second run; ``fmri.mode``
    overridden recomputes the averaging only (the group's second pass stacks instead of
    summing); each session is its own finished MLflow run with the spec as params; the run
    history, the compiled view and ``compare`` agree on the fingerprints."""
    project = copy_of(demo_features)
    stats_file, = outputs(project, "fmri_stats/*/norm_stats.npz")
    tensor_file, = outputs(project, "fmri_tensor/*/fmri_train.npy")
    stamp = stats_file.stat().st_mtime_ns

    again = session_run(project, "fmri", experiment="demo")
    assert again.ran == set() and "reusing the caches of" in again.log
    changed = session_run(project, "fmri", experiment="demo", fmri={"mode": "per_subject"})
    assert changed.ran == {"fmri_normalize_group-1_run-1", "build_fmri_tensor"}
    assert stats_file.stat().st_mtime_ns == stamp
    per_subject, = [p for p in outputs(project, "fmri_tensor/*/fmri_train.npy") if p != tensor_file]
    cross, per = np.load(tensor_file), np.load(per_subject)
    assert per.shape == (4, *cross.shape)  # 4 subjects x 600 TRs vs 600 TRs
    np.testing.assert_allclose(per.mean(0), cross, atol=1e-5)

    truth = np.load(next(project.glob("data/01_raw/demo/*/ground_truth.npz")))
    stats = np.load(stats_file)
    brain = truth["region_labels"] > 0
    assert np.array_equal(stats["mask"], brain)
    region = truth["region_labels"][brain]
    response = truth["shared_response"]
    r = np.array([np.corrcoef(cross[:, v], response[:, v])[0, 1] for v in np.flatnonzero(region < 4)])
    assert np.median(r) > 0.6  # each responsive voxel follows its planted response
    visual_signal = response[:, region == 1].mean(axis=1)
    r_silent = [np.corrcoef(cross[:, v], visual_signal)[0, 1] for v in np.flatnonzero(region == 4)]
    assert np.median(np.abs(r_silent)) < 0.2  # unresponsive voxels carry no planted signal

    history = _history(project)
    assert [r["pipelines"] for r in history] == [["fmri"]] * 2
    assert [r["spec"]["fmri"]["mode"] for r in history] == ["cross_subject", "per_subject"]
    registry = json.loads((project / "data/.giblet/experiments.json").read_text())
    assert any("#overrides=" in reference for reference in registry)  # prune keeps the override's caches
    shown = giblet(project, "spec", "--params", "fmri.mode=per_subject").output
    compared = giblet(project, "compare", "demo~1", "demo~0").output
    assert "fmri.mode" in compared and "fmri_tensor" in compared

    pytest.importorskip("kedro_mlflow")  # the tracking extra (make install has it)
    _, runs = mlflow_runs(project)
    # each session ended its own run (one left open would be ended FAILED by the harness)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    first, second = (r.data for r in runs)
    assert first.params["spec.fmri.mode"] == "cross_subject" and second.params["spec.fmri.mode"] == "per_subject"
    assert first.params["spec.fmri.zscore.ddof"] == "1" and first.params["spec.name"] == "demo"
    assert second.tags["giblet.overrides"] == '{"fmri.mode": "per_subject"}'
    tensor_fp = second.tags["fingerprint.fmri_tensor"]
    assert tensor_fp != first.tags["fingerprint.fmri_tensor"] and tensor_fp in shown  # the compiled view agrees
    assert second.tags["fingerprint.fmri_stats"] == first.tags["fingerprint.fmri_stats"]
    assert per_subject.parent.name == tensor_fp


def test_user_data_spec_and_replaced_raw_file(project, rng):
    raw = project / "data" / "01_raw"
    for sid, data in zip(("01", "02"), random_runs(rng, 2, n_trs=30)):
        write_run(raw / f"sub-{sid}.nii.gz", data)
    spec = project / "mine.yml"
    spec.write_text('name: mine\nfmri:\n  subjects: {pattern: "sub-{id}.nii.gz", ids: ["01", "02"]}\n  tr: 1.5\n')
    first = session_run(project, "fmri", experiment=str(spec))
    assert "generate_demo_data" not in first.ran and "compute_fmri_norm_stats" in first.ran
    assert session_run(project, "fmri", experiment=str(spec)).ran == set()
    write_run(raw / "sub-02.nii.gz", random_runs(rng, 1, n_trs=30)[0])  # new content, same name
    third = session_run(project, "fmri", experiment=str(spec))
    assert {"compute_fmri_norm_stats", "build_fmri_tensor"} <= third.ran
    assert len(outputs(project, "fmri_stats/*/norm_stats.npz")) == 2


def test_bids_folder_with_confounds_through_kedro_run(project):
    """A BIDS derivatives folder under data/01_raw: runs, TR and confound tables found by
    name, cleaned; a confound table that does not fit is named by ``kedro run`` before any
    node runs."""
    from tests.spec.test_bids import bids_tree

    root = bids_tree(project / "data" / "01_raw" / "fmriprep")
    spec = project / "bids.yml"
    spec.write_text("name: bids\nfmri:\n  bids: {root: fmriprep, task: movie, space: MNI152NLin2009cAsym}\n"
                    "  split: {by: run, val: 0.2, test: ['2']}\n"
                    "  clean: {detrend: true, confounds: {columns: [trans_x, trans_y, rot_z, trans_x_derivative1]}}\n")
    session_run(project, "fmri", experiment=str(spec))
    cleaning = json.loads(next(project.glob("data/03_primary/fmri_stats/*/cleaning.json")).read_text())
    # the variance cleaning removed is measured on training TRs: run 2 is the test run
    assert {(r["subject"], r["run"]) for r in cleaning["runs"]} == {("01", "1"), ("02", "1")}
    assert np.load(next(project.glob("data/05_model_input/fmri_tensor/*/fmri_train.npy"))).shape == (60, 18)

    table = next(root.glob("sub-02/func/*run-2_desc-confounds_timeseries.tsv"))
    table.write_text("\n".join(table.read_text().splitlines()[:-3]) + "\n")  # 3 rows short
    result = kedro(project, "run", "--pipelines=fmri", "--params", f"experiment={spec}", expect=2)
    assert re.search(r"Error: subject '02' run '2': fmri.clean.confounds: the confound table has 27 rows but "
                     r"the run has 30 volumes", result.stderr)
    assert "Traceback" not in result.stdout + result.stderr


# --------------------------------------------------------- what a user reads (processes)
def test_bad_spec_is_one_clean_message(project):
    spec = project / "bad.yml"
    spec.write_text("name: bad\nfmri:\n  subjects: {'01': a.nii.gz}\n  tr: 1.5\n  mode: per_subjects\n")
    result = kedro(project, "run", "--pipelines=fmri", "--params", f"experiment={spec}", expect=2)
    assert "bad.yml" in result.stderr and "fmri.mode" in result.stderr and "per_subject" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(project.glob("data/0[2-8]*/*/*"))  # nothing written


def test_bad_input_files_are_named_before_any_node_runs(project, rng):
    raw = project / "data" / "01_raw"
    write_run(raw / "a.nii.gz", random_runs(rng, 1)[0])
    (raw / "b.nii.gz").write_bytes(b"not nifti")
    spec = project / "s.yml"
    spec.write_text("name: s\nfmri:\n  subjects: {'01': a.nii.gz, '02': b.nii.gz, '03': c.nii.gz}\n  tr: 1.5\n")
    result = kedro(project, "run", "--pipelines=fmri", "--params", f"experiment={spec}", expect=2)
    assert "fmri.subjects['03']: file not found" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_error_found_by_a_node_is_one_clean_message(project, rng):
    raw = project / "data" / "01_raw"
    runs = random_runs(rng, 2)
    write_run(raw / "a.nii.gz", runs[0])
    write_run(raw / "b.nii.gz", np.zeros_like(runs[1]))
    spec = project / "s.yml"
    spec.write_text("name: s\nfmri:\n  subjects: {'01': a.nii.gz, '02': b.nii.gz}\n  tr: 1.5\n")
    result = kedro(project, "run", "--pipelines=fmri", "--params", f"experiment={spec}", expect=2)
    assert re.search(r"Error: subject '02'.*every voxel is constant", result.stderr)
    assert not outputs(project, "fmri_stats/*/norm_stats.npz")


def test_the_lesion_pipeline_needs_a_lesion_section(project):
    """Refused before any node runs, not even the demo data's."""
    refused = kedro(project, "run", "--pipelines=lesion", "--params", "experiment=demo_runs", expect=2)
    assert "needs a 'lesion' section" in refused.stderr and process_ran(refused) == set()
    assert not list(project.glob("data/01_raw/*"))


# ----------------------------------------------------------------------- caches
def _flip_a_bit(path: Path, keep_stat: bool) -> None:
    """Damage one byte near the end of ``path``; ``keep_stat``: same size, time and inode
    (disk rot), else a write that changes the modification time."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(stat.st_size - 5)
        byte = handle.read(1)
        handle.seek(stat.st_size - 5)
        handle.write(bytes([byte[0] ^ 1]))
    if keep_stat:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_spec_command_cache_pruning_and_damaged_caches(demo_features, copy_of):
    project = copy_of(demo_features)
    shown = giblet(project, "spec").output
    assert "fmri_stats:" in shown and "fingerprint:" in shown and "/data/03_primary/fmri_stats/" in shown
    stale = project / "data" / "05_model_input" / "fmri_tensor" / "0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "fmri_train.npy").write_bytes(b"old")
    listing = giblet(project, "caches").output
    assert re.search(r"UNREFERENCED .*0123456789abcdef", listing) and "used by demo" in listing
    giblet(project, "caches", "--prune", "--yes")
    assert not stale.exists()
    tensor, = outputs(project, "fmri_tensor/*/fmri_train.npy")  # the used cache is kept
    good = np.load(tensor)

    assert "every file of" in giblet(project, "caches", "--verify").output
    _flip_a_bit(tensor, keep_stat=True)  # disk rot: one bit, same size, time and inode
    assert session_run(project, "fmri").ran == set()  # the stat memo trusts it
    checked = giblet(project, "caches", "--verify", expect=1).output
    assert re.search(r"DAMAGED .*fmri_tensor", checked) and "fmri_train.npy: content does not match" in checked
    assert session_run(project, "fmri").ran == {"build_fmri_tensor"}
    assert "every file of" in giblet(project, "caches", "--verify").output
    np.testing.assert_array_equal(np.load(tensor), good)

    _flip_a_bit(tensor, keep_stat=False)  # a changed stat is hashed by the run itself
    rerun = session_run(project, "fmri")
    assert "damaged cache, recomputing it: content does not match its recorded digest" in rerun.log
    assert rerun.ran == {"build_fmri_tensor"}
    np.testing.assert_array_equal(np.load(tensor), good)


def test_stimulus_stage_caches_per_modality(demo_features, copy_of):
    root = demo_features.root
    report, = root.glob("data/08_reporting/stimulus_alignment/*/stimulus_alignment.json")
    modalities = json.loads(report.read_text())["modalities"]
    assert modalities["video"]["shape"] == [600, 3, 3, 36, 64]
    assert modalities["audio"]["shape"] == [600, 2, 112] and modalities["audio"]["dtype"] == "int16"
    assert modalities["text"]["shape"] == [600, 512] and modalities["text"]["valid_trs"] == 600

    # ground truth: the demo's square brightness is visible on the TR it was planted on
    green_square, planted, calm = planted_square(root)
    assert np.corrcoef(green_square[calm], planted[calm])[0, 1] > 0.95
    late = calm[1:] & calm[:-1]
    assert np.corrcoef(green_square[1:][late], planted[:-1][late])[0, 1] < \
        np.corrcoef(green_square[calm], planted[calm])[0, 1] - 0.02

    project = copy_of(demo_features)
    assert session_run(project, "stimulus").ran == set()
    assert session_run(project, "stimulus", fmri={"mode": "per_subject"}).ran == set()
    changed = session_run(project, "stimulus", stimulus={"video": {"frames_per_tr": 2}})
    assert changed.ran == {"extract_video_frames", "video_hrf", "check_stimulus_alignment"}  # audio, text kept
    frames = [np.load(p, mmap_mode="r") for p in project.glob("data/05_model_input/video_features/*/*/values.npy")]
    assert sorted(f.shape[1] for f in frames) == [2, 3]  # frames per TR


@pytest.mark.trains
def test_a_spec_with_only_the_labs_own_features_trains_and_is_evaluated(demo_features, copy_of):
    """No video, audio or text: the demo's planted per-TR features (an npz array at one
    sample per TR) and its annotation column (categorical) as `stimulus.features`. The
    features go through the HRF, the model, the ridge and the evaluation; the model,
    fed the true drivers of the planted response, predicts the held-out fMRI."""
    project = copy_of(demo_features)
    base = (project / "conf/base/experiments/demo.yml").read_text()
    start, end = base.index("stimulus:"), base.index("  hrf:")
    spec = base[:start] + (
        "stimulus:\n"
        "  features:\n"
        "    planted: {path: \"{demo}/ground_truth.npz\", key: features_tr, rate_hz: 0.6666666666666666}\n"
        "    scene: {table: \"{demo}/annotations.xlsx\", columns: {\"Scene Details - A Level \": categorical}}\n"
    ) + base[end:]
    spec = spec.replace("name: demo", "name: own_features").replace("epochs: 40", "epochs: 20")
    spec = spec.replace("lr: 1.0e-3", "lr: 3.0e-3")  # a small model: it learns faster
    spec = spec[:spec.index("lesion:")]  # no lesions here
    (project / "conf/base/experiments/own_features.yml").write_text(spec)
    result = session_run(project, "evaluate", experiment="own_features")
    assert {"extract_stimulus_features", "features_hrf", "train_model", "fit_ridge_reference"} <= result.ran
    assert "compute_fmri_norm_stats" not in result.ran  # the demo's fMRI stage is shared
    features, = new_outputs(project, demo_features, "stimulus_features_tr/*/stimulus_features_tr/meta.json")
    columns = json.loads(features.read_text())["columns"]
    assert columns[:2] == ["planted:0", "planted:1"] and any(c.startswith("scene:Scene Details - A Level=") for c in columns)
    report = json.loads(next(project.glob("data/08_reporting/verify/*/verification_report.json")).read_text())
    assert report["passed"], [c for c in report["checks"] if not c["pass"]]
    metrics = json.loads(next(project.glob("data/07_model_output/evaluate/*/evaluation_metrics.json")).read_text())
    assert metrics["autoencoder"]["r_over_ceiling"] > 0.5, metrics["autoencoder"]  # 0.59 when written
    assert "features" in metrics["reconstruction"] and "planted:0" in metrics["reconstruction"]["features"]["column_r"]
    assert "features" in json.dumps(metrics["ridge"])


def _verification_of(project: Path, spec: Path) -> dict:
    """Train ``spec`` from Python; its verification report."""
    before = set(project.glob("data/08_reporting/verify/*/verification_report.json"))
    session_run(project, "train", experiment=str(spec))
    report, = set(project.glob("data/08_reporting/verify/*/verification_report.json")) - before
    return json.loads(report.read_text())


@pytest.mark.trains
def test_a_demo_whose_stimulus_comes_from_another_seed_fails_verification(demo_features, copy_of):
    """The demo's fMRI with another demo's movie and annotations: every training check
    passes except the one that exists for this mistake, which says why; the same training
    on the demo's own movie passes it. (Shorter than the demo's training, and video and
    text only: the check is the same with or without the audio, which costs most to
    extract; the control shows these settings suffice.)"""
    project = copy_of(demo_features)
    base = (project / "conf/base/experiments/demo.yml").read_text()
    (project / "other.yml").write_text(base.replace("name: demo", "name: other").replace("  seed: 0\n", "  seed: 1\n"))
    before = set(project.glob("data/01_raw/demo/*"))
    session_run(project, "demo_data", experiment=str(project / "other.yml"))
    other, = set(project.glob("data/01_raw/demo/*")) - before
    short = base.replace("epochs: 40", f"epochs: {MISMATCH_EPOCHS}")
    short = "\n".join(line for line in short.splitlines() if not line.startswith("  audio:"))
    (project / "control.yml").write_text(short.replace("name: demo", "name: control"))
    mismatched = short.replace("name: demo", "name: mismatch")
    for file in ("movie.mp4", "annotations.xlsx"):
        mismatched = mismatched.replace(f'"{{demo}}/{file}"', f'"{other / file}"')
    (project / "mismatch.yml").write_text(mismatched)

    control = _verification_of(project, project / "control.yml")
    assert control["passed"], [c for c in control["checks"] if not c["pass"]]
    report = _verification_of(project, project / "mismatch.yml")
    failed = [c for c in report["checks"] if not c["pass"]]
    assert not report["passed"] and [c["check"] for c in failed] == ["the stimulus drives the brain"], failed
    assert "circularly shifted" in failed[0]["reason"] and failed[0]["observed"]["p"] > 0.05


# ----------------------------------------------------------------------- sweeps
def test_a_sweep_runs_its_points_on_shared_caches_and_compares_them(demo_features, copy_of):
    """Two points that differ only in a training key: the first computes the fMRI tensor
    (removed from the copy), the second reuses it (no node runs); compare --sweep lists
    both runs."""
    project = copy_of(demo_features)
    shutil.rmtree(project / "data/05_model_input/fmri_tensor")
    logs = project / "data/09_logs"
    giblet(project, "sweep", "-e", "demo", "--grid", "train.lr=1e-3,3e-4", "--run", "--pipelines=fmri")
    first, second = (path.read_text() for path in sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime))
    assert "Running node: build_fmri_tensor" in first and "Running node: compute_fmri_norm_stats" not in first
    assert "Running node" not in second
    lines = giblet(project, "compare", "--sweep", "demo").output.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("point")):]
    assert table[0].split()[:3] == ["point", "train.lr", "run"]
    assert [row.split()[:2] for row in table[1:]] == [["demo-00", "0.001"], ["demo-01", "0.0003"]]
    assert all(row.split()[2] != "not" for row in table[1:])
    script = giblet(project, "sweep", "-e", "demo", "--grid", "train.lr=1e-3,3e-4", "--slurm").output
    assert "#SBATCH --array=0-1" in script


# ----------------------------------------------------------------------- runners
FMRI_CACHES = ("05_model_input/fmri_tensor/*/*.npy", "05_model_input/fmri_runs/*/groups/*/*.npy",
               "03_primary/fmri_stats/*/norm_stats.npz", "03_primary/fmri_stats/*/runs/*/moments.npz",
               "03_primary/fmri_stats/*/runs/*/voxels.*")


def _arrays(path: Path, content: bytes) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":  # zip members carry their write time: compare the arrays
        with np.load(io.BytesIO(content)) as archive:
            return {key: archive[key] for key in archive.files}
    return {"": np.load(io.BytesIO(content))}


def test_the_fmri_map_reduce_on_parallel_and_dask_runners_writes_the_sequential_caches(demo_features, copy_of):
    """A node per subject and run, then per group of subjects (2 here) and run:
    ParallelRunner (processes) and the Dask runner (a LocalCluster of 2 workers) write
    every fMRI cache, partitions included, bitwise as the sequential run; a partition lost
    (a run killed before writing it) is the only map node that runs again."""
    project = copy_of(demo_features)
    for stage in ("03_primary/fmri_stats", "05_model_input/fmri_runs", "05_model_input/fmri_tensor"):
        shutil.rmtree(project / "data" / stage)  # the demo data stay
    spec = (project / "conf/base/experiments/demo.yml").read_text()
    (project / "groups.yml").write_text(spec.replace("mode: cross_subject",
                                                     "mode: cross_subject\n  subjects_per_group: 2"))
    groups_spec = str(project / "groups.yml")
    session_run(project, "fmri", experiment=groups_spec)
    sequential = {path: path.read_bytes() for pattern in FMRI_CACHES for path in project.glob(f"data/{pattern}")}
    partitions = [f"sub-{sid:02d}_run-1" for sid in range(1, 5)]
    groups = ["group-1_run-1", "group-2_run-1"]
    assert sum("/runs/" in str(path) for path in sequential) == 3 * len(partitions)  # moments, kept voxels, index
    assert sum("/groups/" in str(path) for path in sequential) == 2 * len(groups)  # sums and val/test rows
    maps = {f"fmri_statistics_{name}" for name in partitions} | {f"fmri_normalize_{name}" for name in groups}
    for runner in ("ParallelRunner", "giblet_kedro.runner.DaskRunner"):
        result = kedro(project, "run", f"--runner={runner}", "--pipelines=fmri", "--recompute", "--params",
                       f"experiment={groups_spec}", GIBLET_DASK_WORKERS="2")  # (a pinned worker has 1 core)
        completed = set(re.findall(r"Completed node: ([\w.-]+)", result.stdout + result.stderr))
        assert maps | {"compute_fmri_norm_stats", "build_fmri_tensor"} <= completed | process_ran(result), runner
        for path, content in sequential.items():
            now, before = _arrays(path, path.read_bytes()), _arrays(path, content)
            assert now.keys() == before.keys(), path
            for key in now:
                np.testing.assert_array_equal(now[key], before[key], err_msg=f"{runner}: {path}:{key}")

    lost = next(path for path in sequential if f"groups/{groups[1]}/combined.npy" in str(path))
    lost.unlink()
    next(path for path in sequential if path.name == "fmri_train.npy").unlink()
    again = session_run(project, "fmri", experiment=groups_spec).ran
    assert again == {f"fmri_normalize_{groups[1]}", "build_fmri_tensor"}, again
    assert lost.read_bytes() == sequential[lost]

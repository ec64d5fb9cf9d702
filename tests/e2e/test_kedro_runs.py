"""End to end through the real `kedro` command, in a throwaway copy of the project."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import random_runs, write_run
from tests.e2e.conftest import kedro, outputs, ran_nodes

pytestmark = pytest.mark.slow


def test_demo_fmri_run_then_cache_reuse_then_mode_change(project):
    first = kedro(project, "run", "--pipeline=fmri")
    assert {"generate_demo_data", "compute_fmri_norm_stats", "build_fmri_tensor"} <= ran_nodes(first)
    stats_file, = outputs(project, "fmri_stats/*/norm_stats.npz")
    tensor_file, = outputs(project, "fmri_tensor/*/fmri_train.npy")
    stamp = stats_file.stat().st_mtime_ns

    again = kedro(project, "run", "--pipelines=fmri")
    assert ran_nodes(again) == set()  # nothing recomputed
    assert stats_file.stat().st_mtime_ns == stamp

    spec = (project / "conf/base/experiments/demo.yml").read_text()
    (project / "per_subject.yml").write_text(spec.replace("mode: cross_subject", "mode: per_subject"))
    changed = kedro(project, "run", "--pipelines=fmri", "--params", "experiment=per_subject.yml")
    # stats, split, demo data reused; the group's second pass stacks instead of summing
    assert ran_nodes(changed) == {"fmri_normalize_group-1_run-1", "build_fmri_tensor"}
    assert stats_file.stat().st_mtime_ns == stamp
    per_subject, = [p for p in outputs(project, "fmri_tensor/*/fmri_train.npy") if p != tensor_file]
    cross, per = np.load(tensor_file), np.load(per_subject)
    assert per.shape == (4, *cross.shape)  # 4 subjects x 300 TRs vs 300 TRs
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


def test_user_data_spec_and_replaced_raw_file(project, rng):
    raw = project / "data" / "01_raw"
    for sid, data in zip(("01", "02"), random_runs(rng, 2, n_trs=30)):
        write_run(raw / f"sub-{sid}.nii.gz", data)
    spec = project / "mine.yml"
    spec.write_text('name: mine\nfmri:\n  subjects: {pattern: "sub-{id}.nii.gz", ids: ["01", "02"]}\n  tr: 1.5\n')
    first = kedro(project, "run", "--pipelines=fmri", "--params", f"experiment={spec}")
    assert "generate_demo_data" not in ran_nodes(first) and "compute_fmri_norm_stats" in ran_nodes(first)
    assert ran_nodes(kedro(project, "run", "--pipelines=fmri", "--params", f"experiment={spec}")) == set()
    write_run(raw / "sub-02.nii.gz", random_runs(rng, 1, n_trs=30)[0])  # new content, same name
    third = kedro(project, "run", "--pipelines=fmri", "--params", f"experiment={spec}")
    assert {"compute_fmri_norm_stats", "build_fmri_tensor"} <= ran_nodes(third)
    assert len(outputs(project, "fmri_stats/*/norm_stats.npz")) == 2


def test_bids_folder_with_confounds_through_kedro_run(project):
    """A BIDS derivatives folder under data/01_raw: runs, TR and confound tables found by
    name, cleaned; a confound table that does not fit is named before any node runs."""
    from tests.spec.test_bids import bids_tree

    root = bids_tree(project / "data" / "01_raw" / "fmriprep")
    spec = project / "bids.yml"
    spec.write_text("name: bids\nfmri:\n  bids: {root: fmriprep, task: movie, space: MNI152NLin2009cAsym}\n"
                    "  split: {by: run, val: 0.2, test: ['2']}\n"
                    "  clean: {detrend: true, confounds: {columns: [trans_x, trans_y, rot_z, trans_x_derivative1]}}\n")
    kedro(project, "run", "--pipelines=fmri", "--params", f"experiment={spec}")
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


def test_spec_command_and_cache_pruning(project):
    kedro(project, "run", "--pipelines=fmri")
    shown = kedro(project, "giblet", "spec").stdout
    assert "fmri_stats:" in shown and "fingerprint:" in shown and "/data/03_primary/fmri_stats/" in shown
    stale = project / "data" / "05_model_input" / "fmri_tensor" / "0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "fmri_train.npy").write_bytes(b"old")
    listing = kedro(project, "giblet", "caches").stdout
    assert re.search(r"UNREFERENCED .*0123456789abcdef", listing) and "used by demo" in listing
    kedro(project, "giblet", "caches", "--prune", "--yes")
    assert not stale.exists()
    tensor, = outputs(project, "fmri_tensor/*/fmri_train.npy")  # the used cache is kept

    assert "every file of" in kedro(project, "giblet", "caches", "--verify").stdout
    stat = tensor.stat()  # disk rot: one bit, same size, time and inode
    with open(tensor, "r+b") as handle:
        handle.seek(stat.st_size - 5)
        byte = handle.read(1)
        handle.seek(stat.st_size - 5)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(tensor, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not ran_nodes(kedro(project, "run", "--pipelines=fmri"))  # the stat memo trusts it
    checked = kedro(project, "giblet", "caches", "--verify", expect=1)
    assert re.search(r"DAMAGED .*fmri_tensor", checked.stdout) and "fmri_train.npy: content does not match" in \
        checked.stdout
    assert ran_nodes(kedro(project, "run", "--pipelines=fmri")) == {"build_fmri_tensor"}
    assert "every file of" in kedro(project, "giblet", "caches", "--verify").stdout


def test_stimulus_stage_caches_per_modality(project):
    first = kedro(project, "run", "--pipelines=stimulus")
    assert {"extract_video_frames", "extract_audio_codes", "extract_text_embeddings",
            "check_stimulus_alignment"} <= ran_nodes(first)
    report, = project.glob("data/08_reporting/stimulus_alignment/*/stimulus_alignment.json")
    modalities = json.loads(report.read_text())["modalities"]
    assert modalities["video"]["shape"] == [300, 3, 3, 36, 64]
    assert modalities["audio"]["shape"] == [300, 2, 112] and modalities["audio"]["dtype"] == "int16"
    assert modalities["text"]["shape"] == [300, 512] and modalities["text"]["valid_trs"] == 300

    # ground truth: the demo's square brightness is visible on the TR it was planted on
    truth = np.load(next(project.glob("data/01_raw/demo/*/ground_truth.npz")))
    frames = np.load(next(project.glob("data/04_feature/video_frames_tr/*/video_frames_tr/values.npy")))
    height, width = frames.shape[-2:]
    green_square = frames[:, :, 1, height // 2 + 1:, : width // 4 - 1].mean(axis=(1, 2, 3))
    planted = truth["features_tr"][:, 1]
    calm = truth["features_tr"][:, list(truth["feature_names"]).index("flash")] == 0  # flashes wash the square out
    assert np.corrcoef(green_square[calm], planted[calm])[0, 1] > 0.95
    late = calm[1:] & calm[:-1]
    assert np.corrcoef(green_square[1:][late], planted[:-1][late])[0, 1] < \
        np.corrcoef(green_square[calm], planted[calm])[0, 1] - 0.02

    assert ran_nodes(kedro(project, "run", "--pipelines=stimulus")) == set()

    spec = (project / "conf/base/experiments/demo.yml").read_text()
    (project / "per_subject.yml").write_text(spec.replace("mode: cross_subject", "mode: per_subject"))
    assert ran_nodes(kedro(project, "run", "--pipelines=stimulus", "--params", "experiment=per_subject.yml")) == set()

    (project / "bw6.yml").write_text(spec.replace("bandwidth: 1.5", "bandwidth: 6.0"))
    changed = kedro(project, "run", "--pipelines=stimulus", "--params", "experiment=bw6.yml")
    assert ran_nodes(changed) == {"extract_audio_codes", "audio_hrf", "check_stimulus_alignment"}
    codes = [np.load(p, mmap_mode="r") for p in project.glob("data/05_model_input/audio_codes/*/audio_codes/values.npy")]
    assert sorted(c.shape[1] for c in codes) == [2, 8]  # 1.5 kbps -> 2 codebooks, 6 kbps -> 8


def test_train_pipeline_passes_verification_and_resumes(project):
    first = kedro(project, "run", "--pipelines=train")
    assert {"train_model", "verify_training"} <= ran_nodes(first)
    assert re.search(r"epoch 40/40 train [0-9.]+", first.stdout + first.stderr)  # per-epoch lines from rank 0
    run_logs = "".join(p.read_text() for p in project.glob("data/09_logs/*.log"))  # one file per run
    assert re.search(r"SpawnProcess-\d+ giblet_kedro.training.ddp: epoch 40/40 train", run_logs)  # rank 0 too
    assert "Running node: train_model" in run_logs and "\r" not in run_logs
    report = json.loads(next(project.glob("data/08_reporting/verify/*/verification_report.json")).read_text())
    failed = [c for c in report["checks"] if not c["pass"]]
    assert report["passed"], failed
    names = {c["check"] for c in report["checks"]}
    assert {"samples and batches drawn in epoch 1", "loss components balanced", "the stimulus drives the brain"} <= names
    assert report["layout"].startswith("voxels")
    assert next(project.glob("data/08_reporting/verify/*/loss_curve.png")).read_bytes()[:4] == b"\x89PNG"
    import torch

    weights = torch.load(next(project.glob("data/06_models/train/*/model_final.pt")), weights_only=True)
    assert weights["readouts.video.weight"].shape == (64, 1184)  # the video decoder reads the voxel layer
    assert ran_nodes(kedro(project, "run", "--pipelines=train")) == set()


def test_two_run_demo_trains_on_run_1_and_aligns_each_run(project):
    """The demo scanned as two runs: per-run cleaning and z-scores, split by run, each run
    on its own part of the movie, and a verification report that follows the split."""
    result = kedro(project, "run", "--pipelines=train", "--params", "experiment=demo_runs")
    assert {"compute_fmri_norm_stats", "train_model", "verify_training"} <= ran_nodes(result)
    split = np.genfromtxt(next(project.glob("data/03_primary/fmri_stats/*/split.csv")), delimiter=",",
                          names=True, dtype=None, encoding="utf-8")
    assert split.size == 360 and list(split["run"][[0, 179, 180, 359]]) == [1, 1, 2, 2]
    # run 1: training TRs, the 10-TR gap, the last 20% for validation; run 2 is the test run
    assert (split["split"][:134] == "train").all() and (split["split"][134:144] == "gap").all()
    assert (split["split"][144:180] == "val").all()
    assert (split["split"][180:] == "test").all()

    report = json.loads(next(project.glob("data/08_reporting/verify/*/verification_report.json")).read_text())
    assert report["passed"], [c for c in report["checks"] if not c["pass"]]
    samples = next(c for c in report["checks"] if c["check"] == "samples and batches drawn in epoch 1")
    assert samples["observed"]["distinct_samples"] == 134  # run 1's training TRs only
    assert report["layout"].startswith("latent")  # this demo keeps the lab's shipped layout

    cleaning = json.loads(next(project.glob("data/03_primary/fmri_stats/*/cleaning.json")).read_text())
    assert len(cleaning["runs"]) == 4 and all(0 < r["variance_removed"] < 0.5 for r in cleaning["runs"])  # run 1s

    # each run's frames come from its own part of the movie: the planted brightness matches in both
    truth = np.load(next(project.glob("data/01_raw/demo/*/ground_truth.npz")))
    frames = np.load(next(project.glob("data/04_feature/video_frames_tr/*/video_frames_tr/values.npy")))
    height, width = frames.shape[-2:]
    green_square = frames[:, :, 1, height // 2 + 1:, : width // 4 - 1].mean(axis=(1, 2, 3))
    planted = truth["features_tr"][:, 1]
    calm = truth["features_tr"][:, list(truth["feature_names"]).index("flash")] == 0  # flashes wash the square out
    for rows in (slice(0, 180), slice(180, 360)):
        assert np.corrcoef(green_square[rows][calm[rows]], planted[rows][calm[rows]])[0, 1] > 0.95


def test_a_spec_with_only_the_labs_own_features_trains_and_is_evaluated(project):
    """No video, audio or text: the demo's planted per-TR features (an npz array at one
    sample per TR) and its annotation column (categorical) as `stimulus.features`. The
    features go through the HRF, the model, the ridge and the evaluation; the model,
    fed the true drivers of the planted response, predicts the held-out fMRI."""
    base = (project / "conf/base/experiments/demo.yml").read_text()
    start, end = base.index("stimulus:"), base.index("  hrf:")
    spec = base[:start] + (
        "stimulus:\n"
        "  features:\n"
        "    planted: {path: \"{demo}/ground_truth.npz\", key: features_tr, rate_hz: 0.6666666666666666}\n"
        "    scene: {table: \"{demo}/annotations.xlsx\", columns: {\"Scene Details - A Level \": categorical}}\n"
    ) + base[end:]
    spec = spec.replace("name: demo", "name: own_features").replace("epochs: 40", "epochs: 20")
    spec = spec[:spec.index("lesion:")]  # no lesions here
    (project / "conf/base/experiments/own_features.yml").write_text(spec)
    result = kedro(project, "run", "--pipelines=evaluate", "--params", "experiment=own_features")
    assert {"extract_stimulus_features", "features_hrf", "train_model", "fit_ridge_reference"} <= ran_nodes(result)
    features = next(project.glob("data/04_feature/stimulus_features_tr/*/stimulus_features_tr/meta.json"))
    columns = json.loads(features.read_text())["columns"]
    assert columns[:2] == ["planted:0", "planted:1"] and any(c.startswith("scene:Scene Details - A Level=") for c in columns)
    report = json.loads(next(project.glob("data/08_reporting/verify/*/verification_report.json")).read_text())
    assert report["passed"], [c for c in report["checks"] if not c["pass"]]
    metrics = json.loads(next(project.glob("data/07_model_output/evaluate/*/evaluation_metrics.json")).read_text())
    assert metrics["autoencoder"]["r_over_ceiling"] > 0.6, metrics["autoencoder"]  # 0.83 here
    assert "features" in metrics["reconstruction"] and "planted:0" in metrics["reconstruction"]["features"]["column_r"]
    assert "features" in json.dumps(metrics["ridge"])


def test_a_sweep_runs_its_points_on_shared_caches_and_compares_them(project):
    """Two points that differ only in a training key: the first computes the fMRI stage,
    the second reuses it (no node runs); compare --sweep lists both runs."""
    result = kedro(project, "giblet", "sweep", "-e", "demo", "--grid", "train.lr=1e-3,3e-4", "--run",
                   "--pipelines=fmri")
    output = result.stdout + result.stderr
    first, second = output.split("--- demo-00")[1].split("--- demo-01")
    assert "Running node: compute_fmri_norm_stats" in first
    assert "Running node" not in second
    lines = kedro(project, "giblet", "compare", "--sweep", "demo").stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("point")):]
    assert table[0].split()[:3] == ["point", "train.lr", "run"]
    assert [row.split()[:2] for row in table[1:]] == [["demo-00", "0.001"], ["demo-01", "0.0003"]]
    assert all(row.split()[2] != "not" for row in table[1:])
    script = kedro(project, "giblet", "sweep", "-e", "demo", "--grid", "train.lr=1e-3,3e-4", "--slurm").stdout
    assert "#SBATCH --array=0-1" in script



FMRI_CACHES = ("05_model_input/fmri_tensor/*/*.npy", "05_model_input/fmri_runs/*/groups/*/*.npy",
               "03_primary/fmri_stats/*/norm_stats.npz", "03_primary/fmri_stats/*/runs/*/moments.npz",
               "03_primary/fmri_stats/*/runs/*/voxels.*")


def _arrays(path: Path, content: bytes) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":  # zip members carry their write time: compare the arrays
        with np.load(io.BytesIO(content)) as archive:
            return {key: archive[key] for key in archive.files}
    return {"": np.load(io.BytesIO(content))}


def test_the_fmri_map_reduce_on_parallel_and_dask_runners_writes_the_sequential_caches(project):
    """A node per subject and run, then per group of subjects (2 here) and run:
    ParallelRunner (processes) and the Dask runner (a LocalCluster of 2 workers) write
    every fMRI cache, partitions included, bitwise as the sequential run; a partition lost
    (a run killed before writing it) is the only map node that runs again."""
    spec = (project / "conf/base/experiments/demo.yml").read_text()
    (project / "groups.yml").write_text(spec.replace("mode: cross_subject",
                                                     "mode: cross_subject\n  subjects_per_group: 2"))
    params = ("--params", "experiment=groups.yml")
    kedro(project, "run", "--pipelines=fmri", *params)
    sequential = {path: path.read_bytes() for pattern in FMRI_CACHES for path in project.glob(f"data/{pattern}")}
    partitions = [f"sub-{sid:02d}_run-1" for sid in range(1, 5)]
    groups = ["group-1_run-1", "group-2_run-1"]
    assert sum("/runs/" in str(path) for path in sequential) == 3 * len(partitions)  # moments, kept voxels, index
    assert sum("/groups/" in str(path) for path in sequential) == 2 * len(groups)  # sums and val/test rows
    maps = {f"fmri_statistics_{name}" for name in partitions} | {f"fmri_normalize_{name}" for name in groups}
    for runner in ("ParallelRunner", "giblet_kedro.runner.DaskRunner"):
        result = kedro(project, "run", f"--runner={runner}", "--pipelines=fmri", "--recompute", *params)
        completed = set(re.findall(r"Completed node: ([\w.-]+)", result.stdout + result.stderr))
        assert maps | {"compute_fmri_norm_stats", "build_fmri_tensor"} <= completed | ran_nodes(result), runner
        for path, content in sequential.items():
            now, before = _arrays(path, path.read_bytes()), _arrays(path, content)
            assert now.keys() == before.keys(), path
            for key in now:
                np.testing.assert_array_equal(now[key], before[key], err_msg=f"{runner}: {path}:{key}")

    lost = next(path for path in sequential if f"groups/{groups[1]}/combined.npy" in str(path))
    lost.unlink()
    next(path for path in sequential if path.name == "fmri_train.npy").unlink()
    again = ran_nodes(kedro(project, "run", "--pipelines=fmri", *params))
    assert again == {f"fmri_normalize_{groups[1]}", "build_fmri_tensor"}, again
    assert lost.read_bytes() == sequential[lost]

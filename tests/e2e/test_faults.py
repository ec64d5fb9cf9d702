"""kill -9 at random points of real `kedro run`s: nothing half-written is ever taken for
valid, the run resumes, and the final outputs equal those of an uninterrupted run."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from giblet_kedro.datasets import atomic
from tests.e2e.harness import KEDRO, RUN_ENVIRONMENT, inside, session_run

# Kills and concurrent runs: timing-sensitive, so never beside another test process.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]
FMRI_OUTPUTS = ("data/03_primary/fmri_stats/*/norm_stats.npz", "data/05_model_input/fmri_tensor/*/fmri_train.npy",
                "data/05_model_input/fmri_runs/*/groups/group-1_run-1/combined.npy")


def start(project: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "200"}
    for name in RUN_ENVIRONMENT:
        env.pop(name, None)
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen([KEDRO, "run", *args], cwd=project, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def damaged_outputs(project: Path) -> list[str]:
    """Every file the project wrote (it has a digest) that no longer matches it."""
    atomic._VERIFIED.clear()
    problems = []
    for sidecar in project.glob(f"data/**/.*{atomic.DIGEST_SUFFIX}"):
        data = sidecar.with_name(sidecar.name[1:-len(atomic.DIGEST_SUFFIX)])
        problem = atomic.check_file(data, full=True)
        if problem not in (None, "missing"):
            problems.append(f"{data}: {problem}")
    return problems


def arrays(project: Path, pattern: str) -> dict[str, np.ndarray]:
    path = next(project.glob(pattern))
    if path.suffix == ".npz":
        with np.load(path) as archive:
            return {k: archive[k] for k in archive.files}
    return {"array": np.load(path)}


def nodes_in_flight(log: Path) -> list[str]:
    """Nodes the log shows started but not completed."""
    text = log.read_text(errors="replace")
    started = re.findall(r"Running node: ([\w.-]+)", text)
    completed = set(re.findall(r"Completed node: ([\w.-]+)", text))
    return [name for name in started if name not in completed]


def kill_inside(project: Path, log: Path, node: str | None, rng: np.random.Generator, timeout: float = 180) -> str:
    """Start the fMRI stage, wait until ``node`` (a node name, or the start of one: any
    node if None) has started, kill -9 the whole process group a few milliseconds later;
    the node it landed in."""
    process = start(project, "--pipelines=fmri", log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flight = nodes_in_flight(log) if log.exists() else []
        if flight and (node is None or any(name.startswith(node) for name in flight)):
            time.sleep(float(rng.uniform(0.0, 0.05)))
            break
        if process.poll() is not None:
            pytest.fail(f"the run ended before {node or 'any node'} started:\n{log.read_text()[-2000:]}")
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    flight = nodes_in_flight(log)
    assert flight, "the kill did not land inside a node"
    return flight[-1]


def assert_same_outputs(project: Path, reference: Path) -> None:
    for pattern in FMRI_OUTPUTS:
        ours, theirs = arrays(project, pattern), arrays(reference, pattern)
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{pattern}: {key}")


def test_fmri_stage_killed_inside_nodes_resumes_to_the_same_result(project, tmp_path, demo_features):
    """kill -9 inside the slow nodes in turn (each kill asserted to land inside a node:
    its start is logged and its completion is not): the demo data, a run's statistics and
    a run's normalization (map-reduce partitions); after each, whatever is on disk is
    whole, and the final run equals an uninterrupted one (the shared build) bit for bit."""
    rng = np.random.default_rng(2026)
    killed = []
    targets = ("generate_demo_data", "fmri_statistics_", "fmri_normalize_", None)
    for index, node in enumerate(targets):
        killed.append(kill_inside(project, tmp_path / f"kill{index}.log", node, rng))
        assert damaged_outputs(project) == []
    assert all(name.startswith(target) for name, target in zip(killed[:3], targets, strict=False)), killed
    session_run(project, "fmri")
    assert_same_outputs(project, demo_features.root)


def short_training(project: Path) -> str:
    """The demo with 6 epochs and a checkpoint after every one; the spec's path."""
    spec = (project / "conf/base/experiments/demo.yml").read_text()
    spec = spec.replace("epochs: 40", "epochs: 6").replace("checkpoint_every: 5", "checkpoint_every: 1")
    (project / "short.yml").write_text(spec.replace("name: demo", "name: short"))
    return str(project / "short.yml")


def _runs_in(pid: int, project: Path) -> bool:
    """Is process ``pid`` working in ``project`` (its ranks inherit the run's folder)?
    Other Kedro runs on the machine are not this test's orphans."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(project)
    except OSError:  # gone, or not ours to inspect
        return False


@pytest.mark.trains
def test_training_killed_mid_run_resumes_to_the_same_weights(demo_features, copy_of, tmp_path):
    import torch

    project, reference = copy_of(demo_features), copy_of(demo_features, "reference")
    session_run(reference, "train", experiment=short_training(reference))
    params = f"experiment={short_training(project)}"
    process = start(project, "--pipelines=train", "--params", params, log=tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    last = None
    while time.monotonic() < deadline and last is None:  # wait for the 2nd checkpoint
        for candidate in project.glob("data/06_models/train/*/run/last.pt"):
            state = torch.load(candidate, weights_only=True, map_location="cpu")
            if int(state["epoch"]) >= 1:
                last = candidate
        time.sleep(0.5)
    assert last is not None, "training never wrote a checkpoint"
    os.kill(process.pid, signal.SIGKILL)  # only the kedro process: its ranks must follow it
    process.wait()
    time.sleep(3)
    orphans = subprocess.run(["pgrep", "-f", "giblet_kedro.training|multiprocessing.spawn"], capture_output=True,
                             text=True).stdout.split()
    assert [pid for pid in orphans if int(pid) != os.getpid() and _runs_in(int(pid), project)] == [], \
        "training ranks outlived kedro run"
    assert re.search(r"epoch \d/6 train [0-9.]+", (tmp_path / "killed.log").read_text())  # rank 0's lines, on the console

    resumed = session_run(project, "train", experiment=str(project / "short.yml"))
    assert "resuming from" in resumed.log
    ours = torch.load(next(project.glob("data/06_models/train/*/model_final.pt")), weights_only=True)
    theirs = torch.load(next(reference.glob("data/06_models/train/*/model_final.pt")), weights_only=True)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)


def test_two_runs_at_once_on_one_data_folder_agree(project, tmp_path, demo_features):
    """Two `kedro run`s of the same spec at the same time: both finish, every node is
    computed once, every output is whole, and the result equals a lone run's (the shared
    build). The tensor's folder is held locked until both runs wait for it, so they
    overlap for sure: one then builds the tensor and the other skips it, saying so."""
    with inside(project):
        from giblet_kedro.spec.compile import compile_experiment

        folder = compile_experiment(str(project / "conf/base/experiments/demo.yml"), check_files=False) \
            .cache_dir("fmri_tensor")
    folder.mkdir(parents=True)
    waiting = re.compile(r"waiting for another run, which is writing \S+ \(build_fmri_tensor\)")
    with open(folder / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        runs = [start(project, "--pipelines=fmri", log=tmp_path / f"run{i}.log") for i in range(2)]

        def run_logs() -> list[str]:  # each run's own log file (plain lines, not the console's)
            return ["".join(path.read_text() for path in project.glob("data/09_logs/*.log")
                            if re.fullmatch(rf"\d+-\d+-{run.pid}(-\d+)?", path.stem)) for run in runs]

        deadline = time.monotonic() + 300
        while not all(waiting.search(text) for text in run_logs()):
            assert time.monotonic() < deadline and all(run.poll() is None for run in runs), run_logs()
            time.sleep(0.2)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert [run.wait(timeout=600) for run in runs] == [0, 0]
    text = run_logs()
    for node in ("generate_demo_data", "compute_fmri_norm_stats", "build_fmri_tensor"):
        assert sum(t.count(f"Running node: {node}") for t in text) == 1, node
    skipped = "Skipping node build_fmri_tensor: another run wrote its outputs while this one waited"
    assert sum(skipped in t for t in text) == 1
    assert damaged_outputs(project) == []
    assert_same_outputs(project, demo_features.root)

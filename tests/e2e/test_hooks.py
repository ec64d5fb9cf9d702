"""What must hold on every path, checked from Python (``KedroSession.run()``, as in a
notebook) rather than through the project's CLI: the hooks in ``giblet_kedro.hooks``."""

from __future__ import annotations

import json
import logging

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from giblet_kedro.errors import SpecError
from giblet_kedro.runs import load_history

pytestmark = pytest.mark.slow


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.delenv("GIBLET_PROJECT_ROOT", raising=False)
    bootstrap_project(project)
    return project


def _run(project, **runtime_params) -> str:
    """Run the fmri pipeline from Python; returns that run's log (its own file, from
    conf/logging.yml: Kedro reconfigures logging, so pytest's capture would miss it)."""
    before = set((project / "data/09_logs").glob("*.log"))
    with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
        session.run(pipeline_names=["fmri"])
    for handler in logging.getLogger().handlers:
        handler.flush()
    new = sorted(set((project / "data/09_logs").glob("*.log")) - before)
    return "".join(path.read_text() for path in new)


def test_python_session_gets_demo_data_cache_reuse_overrides_and_history(in_project):
    log = _run(in_project, experiment="demo")  # no demo_data in the pipeline: the hook generates it
    assert "Running node: generate_demo_data" in log and "Running node: build_fmri_tensor" in log
    tensors = sorted(in_project.glob("data/05_model_input/fmri_tensor/*/fmri_train.npy"))
    assert len(tensors) == 1 and next(in_project.glob("data/01_raw/demo/*/movie.mp4"))
    stamp = tensors[0].stat().st_mtime_ns

    log = _run(in_project, experiment="demo")  # everything cached: no node runs
    assert "Running node" not in log
    assert "reusing the caches of" in log
    assert tensors[0].stat().st_mtime_ns == stamp

    log = _run(in_project, experiment="demo", fmri={"mode": "per_subject"})  # an override: a new tensor only
    assert "Running node: build_fmri_tensor" in log and "Running node: compute_fmri_norm_stats" not in log
    assert len(list(in_project.glob("data/05_model_input/fmri_tensor/*/fmri_train.npy"))) == 2

    history = load_history()
    assert [r["pipelines"] for r in history] == [["fmri"]] * 3
    assert history[-1]["spec"]["fmri"]["mode"] == "per_subject" and history[0]["spec"]["fmri"]["mode"] == "cross_subject"
    registry = json.loads((in_project / "data/.giblet/experiments.json").read_text())
    assert any("#overrides=" in reference for reference in registry)  # prune keeps the override's caches


def test_python_session_checks_the_spec_before_any_node_runs(in_project):
    with pytest.raises(SpecError, match="fmri.mode: Input should be"):
        _run(in_project, experiment="demo", fmri={"mode": "per_subjects"})
    assert not list(in_project.glob("data/01_raw/demo/*"))  # nothing ran, not even the demo data
    assert load_history() == []


def test_recompute_runtime_param_turns_cache_reuse_off(in_project):
    _run(in_project, experiment="demo")
    assert "Running node: compute_fmri_norm_stats" in _run(in_project, experiment="demo", recompute=True)


def test_python_session_waits_for_a_lock_held_on_a_nodes_output_folder(in_project):
    """Kedro's default runner has no locks; the hook locks each node's output folders, so a
    run from Python waits while another process writes the same cache."""
    import fcntl
    import threading
    import time

    from giblet_kedro.spec.compile import compile_experiment

    folder = compile_experiment(str(in_project / "conf/base/experiments/demo.yml"), check_files=False) \
        .cache_dir("fmri_tensor")
    folder.mkdir(parents=True)
    with open(folder / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        runner = threading.Thread(target=_run, args=(in_project,), kwargs={"experiment": "demo"})
        runner.start()
        deadline = time.monotonic() + 120
        while not list(in_project.glob("data/03_primary/fmri_stats/*/norm_stats.npz")) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # the stats are written; the tensor node now waits for the lock
        assert runner.is_alive() and not (folder / "fmri_train.npy").exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    runner.join(timeout=120)
    assert not runner.is_alive() and (folder / "fmri_train.npy").is_file()

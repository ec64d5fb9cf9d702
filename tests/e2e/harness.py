"""How end-to-end tests drive the project: in-process where the process is not the point.

- :func:`session_run`: a run through ``KedroSession`` in this process, as a notebook
  runs one (every hook holds; no 5-second ``kedro`` start-up);
- :func:`giblet`: a ``kedro giblet ...`` command through click's ``CliRunner``;
- :func:`kedro`: the real ``kedro`` command in a subprocess, kept for what only a process
  shows: an exit code, the message a user reads, a kill, a runner with workers.

Each takes the project folder; the in-process ones work in it (its ``data/``, its
``conf/``) and leave the working directory and environment as they found them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

KEDRO = str(Path(sys.executable).parent / "kedro")
# Environment a run sets for its own spawned processes: never carried to the next run.
RUN_ENVIRONMENT = ("GIBLET_PROJECT_ROOT", "GIBLET_RUN_LOG")
LOG_FOLDER = Path("data") / "09_logs"


def new_project(root: Path) -> Path:
    """An empty copy of the project at ``root``: its configuration, no data."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", root)
    shutil.copytree(REPO / "conf" / "base", root / "conf" / "base")
    shutil.copy(REPO / "conf" / "logging.yml", root / "conf" / "logging.yml")
    (root / "conf" / "local").mkdir()
    (root / "data").mkdir()
    (root / "src").mkdir()  # Kedro expects a source folder; the package itself is installed
    return root


def copy_project(source: Path, target: Path) -> Path:
    """A private copy of a built project: its configuration and caches, without the run
    history, the registry of run specs, the logs and the MLflow runs of whoever built it
    (a test sees only its own runs)."""
    left_out = {"data/.giblet/runs.jsonl", "data/.giblet/experiments.json", "data/09_logs", "mlruns", "build", ".viz"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        relative = Path(folder).relative_to(source)
        return {name for name in names if (relative / name).as_posix() in left_out}

    shutil.copytree(source, target, ignore=ignore, symlinks=True)
    return target


def ran_nodes(text: str) -> set[str]:
    """The nodes a run's log says it started."""
    return set(re.findall(r"Running node: ([\w.-]+)", text))


def outputs(project: Path, pattern: str) -> list[Path]:
    return sorted(project.glob(f"data/*/{pattern}"))


# ----------------------------------------------------------------------- in process
@contextlib.contextmanager
def inside(project: Path) -> Iterator[None]:
    """Work in ``project`` (cwd) with no run's environment left over; restore after it the
    working directory, the run's variables, and ``sys.path`` and ``PYTHONPATH``, to which
    ``bootstrap_project`` prepends the project's ``src``. (What the project sets once per
    process at import, such as MLflow's file-store switch, stays.)"""
    names = (*RUN_ENVIRONMENT, "PYTHONPATH")
    saved, path = {name: os.environ.get(name) for name in names}, list(sys.path)
    for name in RUN_ENVIRONMENT:
        os.environ.pop(name, None)
    try:
        with contextlib.chdir(project):
            yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        sys.path[:] = path


def _end_the_session() -> None:
    """What a session leaves in this process, undone: the run's log file (later logging
    of this process must not append to it), an MLflow run a failed run left open, and the
    experiment's partitions (the next session or a bare ``register_pipelines()`` starts
    from the default experiment's, as in a fresh process)."""
    from giblet_kedro.logs import RUN_FILE_HANDLER
    from giblet_kedro.pipelines import partitions

    for handler in logging.getLogger().handlers:
        handler.flush()
        if handler.get_name() == RUN_FILE_HANDLER and isinstance(handler, logging.FileHandler):
            handler.close()
            handler.baseFilename = os.devnull
    if "mlflow" in sys.modules:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED")
    partitions._active = None


@dataclass
class Run:
    """What an in-process run left: the text of its log file(s) and the nodes it ran."""

    log: str

    @property
    def ran(self) -> set[str]:
        return ran_nodes(self.log)


def session_run(project: Path, pipelines: list[str] | str, **runtime_params) -> Run:
    """Run ``pipelines`` from Python (``KedroSession``, Kedro's own sequential runner; the
    project's hooks lock, skip and record); returns the run's log (its own file under
    ``data/09_logs``, from ``conf/logging.yml``). A failure raises, as in a notebook."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    names = [pipelines] if isinstance(pipelines, str) else list(pipelines)
    folder = project / LOG_FOLDER
    before = set(folder.glob("*.log"))
    with inside(project):
        try:
            bootstrap_project(project)
            with KedroSession.create(project_path=project, runtime_params=runtime_params or None) as session:
                session.run(pipeline_names=names)
        finally:
            _end_the_session()
    return Run("".join(path.read_text() for path in sorted(set(folder.glob("*.log")) - before)))


@dataclass
class Command:
    """A ``kedro giblet`` command's exit code and what it printed."""

    exit_code: int
    output: str


def giblet(project: Path, *args: str, expect: int = 0) -> Command:
    """``kedro giblet ARGS`` in ``project``, through click's ``CliRunner``."""
    from click.testing import CliRunner

    from giblet_kedro.cli import cli

    with inside(project):
        result = CliRunner().invoke(cli, ["giblet", *args], catch_exceptions=False, terminal_width=200)
    assert result.exit_code == expect, result.output
    return Command(result.exit_code, result.output)


# ------------------------------------------------------------------------ processes
def kedro(project: Path, *args: str, expect: int = 0, **environment: str) -> subprocess.CompletedProcess:
    """The real ``kedro ARGS`` in ``project`` (``environment``: extra variables); asserts its
    exit code."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "200", **environment}
    for name in RUN_ENVIRONMENT:
        env.pop(name, None)
    result = subprocess.run([KEDRO, *args], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def mlflow_runs(project: Path):
    """The MLflow client of the project's local store (``mlruns/``) and its runs, oldest first."""
    import mlflow

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient(f"file://{project / 'mlruns'}")
    experiment = client.get_experiment_by_name("giblet_kedro")
    assert experiment is not None, "no MLflow experiment in the project's mlruns/"
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def planted_square(project: Path):
    """The demo's green square as the video cache shows it, and as it was planted: the
    cache's mean green level in the square's corner per TR (n_trs,), the planted
    brightness (n_trs,), and the TRs without a flash (flashes wash the square out)."""
    import numpy as np

    truth = np.load(next(project.glob("data/01_raw/demo/*/ground_truth.npz")))
    frames = np.load(next(project.glob("data/04_feature/video_frames_tr/*/video_frames_tr/values.npy")))
    height, width = frames.shape[-2:]
    seen = frames[:, :, 1, height // 2 + 1:, : width // 4 - 1].mean(axis=(1, 2, 3))
    calm = truth["features_tr"][:, list(truth["feature_names"]).index("flash")] == 0
    return seen, truth["features_tr"][:, 1], calm


def process_ran(result: subprocess.CompletedProcess) -> set[str]:
    return ran_nodes(result.stdout + result.stderr)

"""Logging: one file per run (conf/logging.yml's run_file handler), training ranks
appending to it, progress bars silent outside a terminal."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import yaml

from giblet_kedro.logs import RUN_LOG_ENV, start_run_log
from giblet_kedro.progress import interactive, progress
from tests.conftest import REPO


def test_progress_bars_are_silent_when_not_on_a_terminal(capfd):
    assert not interactive()  # pytest captures stderr: not a terminal, as in a SLURM log
    with progress("fMRI statistics", 10, "runs") as advance:
        for _ in range(10):
            advance()
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_each_run_gets_its_own_log_file(tmp_path, monkeypatch):
    from kedro.framework.project import LOGGING

    monkeypatch.delenv(RUN_LOG_ENV, raising=False)
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        LOGGING.configure(yaml.safe_load((REPO / "conf" / "logging.yml").read_text()))
        first = start_run_log(tmp_path)
        logging.getLogger("giblet_kedro.test").info("first run")
        second = start_run_log(tmp_path)
        logging.getLogger("giblet_kedro.test").warning("second run")
        assert first != second and "second run" not in first.read_text()
        assert first.parent == tmp_path / "data" / "09_logs"
        assert "INFO    MainProcess giblet_kedro.test: first run" in first.read_text()
        assert "second run" in second.read_text() and os.environ[RUN_LOG_ENV] == str(second)
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_a_training_rank_appends_to_the_run_log(tmp_path):
    log_file = tmp_path / "run.log"
    log_file.write_text("parent line\n")
    code = ("import logging; from pathlib import Path; from giblet_kedro.logs import configure_rank_logging; "
            f"configure_rank_logging(Path({str(REPO)!r})); logging.getLogger('giblet_kedro.training').info('epoch 1/1')")
    env = {**os.environ, RUN_LOG_ENV: str(log_file), "KEDRO_DISABLE_TELEMETRY": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, timeout=120)
    text = log_file.read_text()
    assert text.startswith("parent line\n") and "giblet_kedro.training: epoch 1/1" in text

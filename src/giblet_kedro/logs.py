"""One log file per run, and the same logging configuration in every training rank.

``conf/logging.yml`` declares a ``run_file`` handler (a plain ``logging.FileHandler``,
writing nowhere until a run starts). :func:`start_run_log` points it at
``data/09_logs/<date>-<time>-<pid>.log`` when a Kedro context is created (a ``kedro``
command, a session from Python); the path is exported as ``GIBLET_RUN_LOG`` so that the
spawned training ranks, configured by :func:`configure_rank_logging` from the same file,
append to it.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from pathlib import Path

import yaml

RUN_FILE_HANDLER = "run_file"
RUN_LOG_ENV = "GIBLET_RUN_LOG"
LOG_FOLDER = Path("data") / "09_logs"


def _run_file_handler() -> logging.FileHandler | None:
    for handler in logging.getLogger().handlers:
        if handler.get_name() == RUN_FILE_HANDLER and isinstance(handler, logging.FileHandler):
            return handler
    return None


def start_run_log(project: Path) -> Path | None:
    """Point the ``run_file`` handler at a new file for this run; returns its path (None
    when the logging configuration has no such handler)."""
    handler = _run_file_handler()
    if handler is None:
        return None
    folder = project / LOG_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    path, n = folder / f"{stem}.log", 1
    while path.exists():  # a second run in the same process and second
        n += 1
        path = folder / f"{stem}-{n}.log"
    handler.acquire()
    try:
        handler.close()
        handler.baseFilename = str(path)
    finally:
        handler.release()
    os.environ[RUN_LOG_ENV] = str(path)
    return path


def logging_config_file(project: Path) -> Path | None:
    """The logging configuration Kedro uses: ``$KEDRO_LOGGING_CONFIG``, else ``conf/logging.yml``."""
    path = Path(os.environ["KEDRO_LOGGING_CONFIG"]) if os.environ.get("KEDRO_LOGGING_CONFIG") else \
        project / "conf" / "logging.yml"
    return path if path.is_file() else None


def configure_rank_logging(project: Path) -> None:
    """A spawned training rank: the run's logging configuration, appending to its log file."""
    path = logging_config_file(project)
    config = yaml.safe_load(path.read_text()) if path is not None else None
    if not isinstance(config, dict) or "handlers" not in config:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        logging.getLogger("giblet_kedro").setLevel(logging.INFO)
        return
    run_file = config["handlers"].get(RUN_FILE_HANDLER)
    if run_file is not None:
        run_file["filename"] = os.environ.get(RUN_LOG_ENV, os.devnull)
        run_file["mode"] = "a"
    from kedro.framework.project import LOGGING  # validates handler classes as for Kedro itself

    LOGGING.configure(config)
    logging.getLogger("giblet_kedro").setLevel(logging.INFO)

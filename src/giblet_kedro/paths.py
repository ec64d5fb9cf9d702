"""Where things live: the project root and the data folder layout."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

PROJECT_MARKER = "[tool.kedro]"


@lru_cache(maxsize=8)
def _find_project_root(start: str) -> Path:
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and PROJECT_MARKER in pyproject.read_text(errors="replace"):
            return folder
    return here


def project_root() -> Path:
    """The Kedro project folder: ``$GIBLET_PROJECT_ROOT``, else the nearest parent of the
    working directory whose ``pyproject.toml`` has a ``[tool.kedro]`` table."""
    env = os.environ.get("GIBLET_PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    return _find_project_root(os.getcwd())


def data_dir() -> Path:
    return project_root() / "data"


def raw_dir() -> Path:
    """Relative paths in a spec resolve against this folder."""
    return data_dir() / "01_raw"


def experiments_dir() -> Path:
    return project_root() / "conf" / "base" / "experiments"


def experiments_dirs(env: str | None = None) -> list[Path]:
    """Where spec names are looked up, first match wins: ``conf/<env>/experiments/``
    (``env`` defaults to Kedro's ``local``), then ``conf/base/experiments/``."""
    env_dir = project_root() / "conf" / (env or "local") / "experiments"
    return [env_dir, experiments_dir()] if env_dir != experiments_dir() else [experiments_dir()]

"""A throwaway copy of the project and the real `kedro` command, for end-to-end tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

KEDRO = str(Path(sys.executable).parent / "kedro")


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root)
    shutil.copytree(REPO / "conf" / "base", root / "conf" / "base")
    shutil.copy(REPO / "conf" / "logging.yml", root / "conf" / "logging.yml")
    (root / "conf" / "local").mkdir()
    (root / "data").mkdir()
    (root / "src").mkdir()  # Kedro expects a source folder; the package itself is installed
    return root


def kedro(project: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "200"}
    env.pop("GIBLET_PROJECT_ROOT", None)
    result = subprocess.run([KEDRO, *args], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == expect, output
    return result


def ran_nodes(result) -> set[str]:
    return set(re.findall(r"Running node: ([\w.-]+)", result.stdout + result.stderr))


def outputs(project: Path, pattern: str) -> list[Path]:
    return sorted(project.glob(f"data/*/{pattern}"))

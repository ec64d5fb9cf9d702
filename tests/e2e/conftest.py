"""End-to-end fixtures: throwaway projects, and the demo's runs built once per test session.

The shared builds form one chain, each step a copy of the one before plus one run:

- ``demo_features``: the default demo's data, fMRI and stimulus stages;
- ``demo_report``: the ``report`` run (training, evaluation, lesions, report) on the CI
  spec (:func:`ci_spec`);
- ``demo_predicted``: two ``predict`` runs on that trained model;

and, apart, ``demo_runs``: the two-run demo's ``evaluate`` run.

Each is built by whichever test process first asks for it, under a file lock, in a folder
every pytest-xdist worker shares (``$GIBLET_TEST_SHARED`` when set, as ``make test`` does
so that its serial pass reuses the parallel pass's builds). Tests read a build and never
write into it: a test that runs something on one copies it first (:func:`copy_of`).
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from tests.e2e.harness import copy_project, new_project, session_run

SHARED_ENV = "GIBLET_TEST_SHARED"
# The shared report run: the demo with fewer lesion controls and one ridge delay set (ci_spec).
CI_RANDOM_REGIONS = 60  # the fewest that keep the lesion test's margin (ci_spec)
CI_DELAYS = [[0, 1]]  # in no default set: a run that ignored the key would not report it
DEMO_RUNS_EPOCHS = 6


@dataclass(frozen=True)
class Built:
    """A shared build: its project folder and what its build recorded (``ran``: the nodes
    its runs started; other keys per build)."""

    root: Path
    info: dict

    @property
    def ran(self) -> set[str]:
        return set(self.info["ran"])


@pytest.fixture
def project(tmp_path) -> Path:
    """An empty project: configuration, no data."""
    return new_project(tmp_path / "project")


@pytest.fixture
def copy_of(tmp_path) -> Callable[[Built], Path]:
    """``copy_of(build)``: a private copy of a shared build, to run things in."""
    def copy(built: Built, name: str = "project") -> Path:
        return copy_project(built.root, tmp_path / name)

    return copy


@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory) -> Path:
    given = os.environ.get(SHARED_ENV)
    if given:
        folder = Path(given)
    else:  # under xdist each worker's base folder is a child of the session's
        base = tmp_path_factory.getbasetemp()
        folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_once(folder: Path, name: str, build: Callable[[Path], dict]) -> Built:
    """``build(folder / name)`` in the first process that asks, under a lock; the others
    wait and read what it recorded. A failed build is reported to every test that needs
    it, not attempted again."""
    target, record = folder / name, folder / f"{name}.json"
    with FileLock(str(folder / f"{name}.lock")):
        if not record.exists():
            if target.exists():
                shutil.rmtree(target)
            try:
                info = {"ok": True, **build(target)}
            except BaseException:  # a timeout too: recorded, so that no other test builds it again
                record.write_text(json.dumps({"ok": False, "error": traceback.format_exc()}))
                raise
            record.write_text(json.dumps(info))
    info = json.loads(record.read_text())
    if not info["ok"]:
        pytest.fail(f"the shared build {name!r} failed:\n{info['error']}", pytrace=False)
    return Built(target, info)


def ci_spec(text: str) -> str:
    """The demo spec of the shared report run: the demo's, with 60 random lesion controls
    instead of 1,000 and one ridge delay set (choosing among sets is unit-tested).

    The lesion test asserts that the three regions' own-modality effects are significant
    after Benjamini-Hochberg over 9 region x modality p-values: three p-values of 1/(n + 1)
    pass at rank 3 when 1/(n + 1) <= 3 x 0.05 / 9, that is n >= 59 controls."""
    spec = yaml.safe_load(text)
    assert "random_regions" not in spec["lesion"] and "evaluate" not in spec, "the demo spec changed: recalibrate"
    spec["lesion"]["random_regions"] = CI_RANDOM_REGIONS
    spec["evaluate"] = {"ridge": {"delay_sets": CI_DELAYS}}
    return yaml.safe_dump(spec, sort_keys=False)


def _ran(run) -> list[str]:
    return sorted(run.ran)


@pytest.fixture(scope="session")
def demo_features(shared_folder) -> Built:
    """The default demo's fMRI and stimulus stages, run from Python on an empty project
    (the hook generates the demo data first)."""
    def build(root: Path) -> dict:
        return {"ran": _ran(session_run(new_project(root), ["fmri", "stimulus"]))}

    return build_once(shared_folder, "demo_features", build)


@pytest.fixture(scope="session")
def demo_report(shared_folder, demo_features) -> Built:
    def build(root: Path) -> dict:
        copy_project(demo_features.root, root)
        spec = root / "conf/base/experiments/demo.yml"
        spec.write_text(ci_spec(spec.read_text()))
        return {"ran": _ran(session_run(root, "report"))}

    return build_once(shared_folder, "demo_report", build)


@pytest.fixture(scope="session")
def demo_predicted(shared_folder, demo_report) -> Built:
    """The trained demo's ``predict`` runs: the held-out movie (the spec's), then the
    training movie; ``info`` names each run's output folder."""
    def build(root: Path) -> dict:
        copy_project(demo_report.root, root)
        runs = {}
        for name, params in (("heldout", {}), ("training", "training")):
            before = set(root.glob("data/07_model_output/predict/*/"))
            if params == "training":
                demo = next(root.glob("data/01_raw/demo/*/"))
                params = {"predict": {"stimulus": str(demo / "movie.mp4"),
                                      "annotations": str(demo / "annotations.xlsx")}}
            run = session_run(root, "predict", **params)
            folder, = set(root.glob("data/07_model_output/predict/*/")) - before
            runs[name] = {"folder": str(folder), "ran": _ran(run)}
        return {"ran": sorted(set().union(*(r["ran"] for r in runs.values()))), "runs": runs}

    return build_once(shared_folder, "demo_predicted", build)


@pytest.fixture(scope="session")
def demo_runs(shared_folder) -> Built:
    """The two-run demo (``demo_runs``): its ``evaluate`` run, from nothing, trained for
    ``DEMO_RUNS_EPOCHS`` epochs instead of the spec's 20 (what its tests check is the
    split, the alignment and the evaluation by run, which hold at that length)."""
    def build(root: Path) -> dict:
        run = session_run(new_project(root), "evaluate", experiment="demo_runs", train={"epochs": DEMO_RUNS_EPOCHS})
        return {"ran": _ran(run)}

    return build_once(shared_folder, "demo_runs", build)

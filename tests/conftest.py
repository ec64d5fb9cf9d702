"""Shared fixtures (small NIfTI runs written to disk, the real data sets) and the suite's
tiers.

Tiers, by marker: ``e2e`` (the project run end to end), ``trains`` (trains a model, or
needs a shared trained run), ``serial`` (kills, locks, timeouts, ports, thread counts:
never beside another test process). ``make test`` runs everything but ``serial`` on two
pytest-xdist workers, then ``serial`` alone; ``make test-fast`` runs the rest. A test not
marked ``trains`` that runs longer than ``SLOW_TEST_LIMIT_S`` fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]
SLOW_TEST_LIMIT_S = 120.0
# Scheduling order under xdist (--dist loadgroup sends the largest groups out first): the
# shared-run groups, then unit tests, then end-to-end tests, which by then find the shared
# builds they copy already made.
_ORDER = {"demo_report": 0, "demo_runs": 0}


def _share_the_cores() -> None:
    """An xdist worker keeps to its share of the cores the suite may use, and torch's
    threads follow it (as do BLAS's and every process the worker starts: they inherit the
    affinity), so two workers never run four threads on two cores."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    index, count = int(worker.removeprefix("gw")), int(count)
    if count <= len(cores):
        share = len(cores) // count
        os.sched_setaffinity(0, cores[index * share:(index + 1) * share])
    import torch
    from threadpoolctl import threadpool_limits

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    threadpool_limits(threads)  # BLAS sized its pool at import, from every core


_share_the_cores()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> int:
        group = item.get_closest_marker("xdist_group")
        if group is not None and group.args and group.args[0] in _ORDER:
            return _ORDER[group.args[0]]
        return 2 if item.get_closest_marker("e2e") else 1

    items.sort(key=rank)  # stable: the order within each tier is kept (or shuffled, if asked)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "call" and report.passed and call.duration > SLOW_TEST_LIMIT_S \
            and item.get_closest_marker("trains") is None:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} ran {call.duration:.0f} s, over the {SLOW_TEST_LIMIT_S:.0f} s allowed a test "
                           "not marked `trains`: make it smaller, share its work (tests/e2e/conftest.py), or mark it")
    return report


def write_run(path: Path, data: np.ndarray, affine: np.ndarray | None = None, tr: float = 1.5,
              dtype=np.int16, time_unit: str = "sec") -> Path:
    """Write a 4D run; integer ``dtype`` makes nibabel store scale factors."""
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4) if affine is None else affine)
    image.set_data_dtype(dtype)
    image.header.set_xyzt_units(xyz="mm", t=time_unit)
    image.header.set_zooms((*image.header.get_zooms()[:3], tr))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def random_runs(rng: np.random.Generator, n_subjects: int, grid=(5, 4, 3), n_trs=40,
                background_zero: bool = True) -> list[np.ndarray]:
    """Subjects' 4D data: baseline + signal + noise inside an ellipsoid, zero outside."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in grid), indexing="ij")
    inside = x**2 + y**2 + z**2 <= 1.2 if background_zero else np.ones(grid, bool)
    shared = rng.standard_normal((*grid, n_trs))
    runs = []
    for _ in range(n_subjects):
        baseline = rng.uniform(500, 1500, size=grid)[..., None]
        data = baseline + 20 * (shared + rng.standard_normal((*grid, n_trs)))
        runs.append(np.where(inside[..., None], data, 0.0))
    return runs


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def nibabel_data() -> Path:
    import nibabel.tests

    return Path(nibabel.tests.__file__).parent / "data"


@pytest.fixture(scope="session")
def nitime_data() -> Path:
    import nitime

    return Path(nitime.__file__).parent / "data"


@pytest.fixture(scope="session")
def alice_dir() -> Path:
    """Five subjects' ROI timecourses (a CC-BY copy kept in tests/data/alice)."""
    return REPO / "tests" / "data" / "alice" / "6mm"

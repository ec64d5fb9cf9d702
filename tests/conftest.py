"""Shared fixtures: small NIfTI runs written to disk, and the real data sets."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]


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

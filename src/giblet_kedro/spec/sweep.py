"""Sweeps: one spec per point of a grid of spec keys, sharing every cache they can.

``kedro giblet sweep -e base --grid model.bottleneck=voxels,2048 --grid train.lr=1e-3,3e-4``
writes the base spec with each combination of values applied (as ``--params`` overrides
are, before validation) to ``conf/local/experiments/sweeps/<base>/<base>-NN.yml``, with
``sweep.json`` listing each point's values. Stage fingerprints come only from what a
stage reads, never from the spec's name, so points that differ in training keys share
the fMRI and stimulus caches: those stages run once, whichever point gets there first
(the others wait on its locks, then reuse it).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from giblet_kedro.datasets.atomic import atomic_path
from giblet_kedro.errors import SpecError
from giblet_kedro.spec.load import parse_spec
from giblet_kedro.spec.reference import apply_overrides

INDEX = "sweep.json"


@dataclass(frozen=True)
class SweepPoint:
    """One spec of a sweep: its name, the values it sets (flat keys) and its file."""

    name: str
    values: dict[str, Any]
    path: Path


def parse_value(text: str) -> Any:
    """A grid value as YAML would read it in a spec (``1e-3`` is a number here too)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    return text.strip()


def parse_grid(items: list[str] | tuple[str, ...]) -> list[tuple[str, list[Any]]]:
    """``["model.bottleneck=voxels,2048", "train.lr=1e-3,3e-4"]`` -> keys and their values."""
    grid, seen = [], set()
    for item in items:
        key, sign, values = item.partition("=")
        key = key.strip()
        if not sign or not key or not values.strip():
            raise SpecError(f"--grid {item!r}: expected KEY=VALUE1,VALUE2,... (e.g. train.lr=1e-3,3e-4)")
        if key in seen:
            raise SpecError(f"--grid {key} is given twice; give all its values in one --grid")
        seen.add(key)
        grid.append((key, [parse_value(v) for v in values.split(",")]))
    if not grid:
        raise SpecError("a sweep needs at least one --grid KEY=VALUE1,VALUE2,...")
    return grid


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1e-3}`` -> ``{"train": {"lr": 1e-3}}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def points(grid: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination, the last key varying fastest."""
    keys = [key for key, _ in grid]
    return [dict(zip(keys, combination, strict=True)) for combination in itertools.product(*(v for _, v in grid))]


def write_sweep(base_file: Path, grid: list[tuple[str, list[Any]]], folder: Path) -> list[SweepPoint]:
    """Validate every point's spec, then write them all (nothing is written when one is
    invalid; the error names the point and the key)."""
    raw = yaml.safe_load(base_file.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or "name" not in raw:
        raise SpecError(f"{base_file}: not an experiment spec (no 'name')")
    base = str(raw["name"])
    texts = []
    for index, values in enumerate(points(grid)):
        name = f"{base}-{index:02d}"
        spec = {**apply_overrides(raw, nest(values), f"{base_file} (sweep point {name})"), "name": name}
        text = (f"# Sweep point {index} of {base_file.name}: "
                + ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items()) + "\n"
                + yaml.safe_dump(spec, sort_keys=False))
        try:
            parse_spec(text, source=f"{base_file} with {values}")
        except SpecError as exc:
            raise SpecError(f"sweep point {name}: {exc}") from None
        texts.append((SweepPoint(name, values, folder / f"{name}.yml"), text))
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / INDEX).exists():  # a previous sweep of this base: its points go
        for old in read_sweep(folder)["points"]:
            Path(old["spec"]).unlink(missing_ok=True)
    for point, text in texts:
        with atomic_path(point.path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    index = {"base": str(base_file), "grid": {k: v for k, v in grid},
             "points": [{"name": p.name, "values": p.values, "spec": str(p.path)} for p, _ in texts]}
    with atomic_path(folder / INDEX) as tmp:
        tmp.write_text(json.dumps(index, indent=1))
    return [point for point, _ in texts]


def read_sweep(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / INDEX).read_text())
    except FileNotFoundError:
        raise SpecError(f"no sweep in {folder} (run `kedro giblet sweep` first)") from None


def slurm_array(points_: list[SweepPoint], pipeline: str, root: Path) -> str:
    """An ``sbatch --array`` script: task ``i`` runs point ``i``. Points that share a stage
    share its cache; concurrent tasks wait on each other's locks instead of recomputing."""
    specs = "\n".join(f'  "{p.path}"' for p in points_)
    return f"""#!/bin/bash
# {len(points_)} sweep points, one array task each: sbatch this file.
#SBATCH --job-name=giblet-sweep
#SBATCH --array=0-{len(points_) - 1}
#SBATCH --nodes=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=giblet-sweep-%A_%a.log
set -euo pipefail
export KEDRO_DISABLE_TELEMETRY=1
cd "{root}"
POINTS=(
{specs}
)
kedro run --pipelines={pipeline} --params "experiment=${{POINTS[$SLURM_ARRAY_TASK_ID]}}"
"""

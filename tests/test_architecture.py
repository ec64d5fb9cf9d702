"""The layout the README describes: nodes are thin wiring, pipelines stand alone."""

from __future__ import annotations

import ast
from pathlib import Path

from giblet_kedro.fmri.partials import GROUP_ROWS_DATASET, GROUP_SUM_DATASET, MOMENTS_DATASET, VOXELS_DATASET
from giblet_kedro.pipeline_registry import register_pipelines

PIPELINES = Path(__file__).resolve().parents[1] / "src" / "giblet_kedro" / "pipelines"
MAX_INPUTS = 7
PARTITION_PREFIXES = tuple(pattern.split("{")[0]
                           for pattern in (MOMENTS_DATASET, VOXELS_DATASET, GROUP_SUM_DATASET, GROUP_ROWS_DATASET))


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
    return modules


def test_no_pipeline_imports_another_pipelines_nodes():
    for package in (p for p in PIPELINES.iterdir() if (p / "nodes.py").exists()):
        for source in package.glob("*.py"):
            others = {m for m in imported_modules(source)
                      if m.startswith("giblet_kedro.pipelines.") and not m.startswith(f"giblet_kedro.pipelines.{package.name}")}
            assert not others, f"{source.relative_to(PIPELINES)} imports {sorted(others)}"


def _partitions(node) -> int:
    """How many of a node's inputs are map-reduce partitions (one per subject and run, or
    per group and run): a reduce node's, or a group node's kept voxels of its subjects."""
    return sum(name.startswith(PARTITION_PREFIXES) for name in node.inputs)


def test_every_node_takes_a_handful_of_inputs():
    """... besides the partitions a reduce or group node combines."""
    nodes = {node.name: node for node in register_pipelines(["__default__"])["__default__"].nodes}
    crowded = {name: len(node.inputs) - _partitions(node) for name, node in nodes.items()
               if len(node.inputs) - _partitions(node) > MAX_INPUTS}
    assert not crowded, crowded

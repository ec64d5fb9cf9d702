"""The fMRI stage's pipeline is generated for the experiment's subjects and runs."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from giblet_kedro.fmri.partials import partition_names
from giblet_kedro.pipeline_registry import PARTS, register_pipelines, requested_pipelines
from giblet_kedro.pipelines import partitions

KEYS = [("01", "1"), ("01", "2"), ("02", "1"), ("02", "2"), ("03", "1"), ("03", "2")]


@pytest.fixture
def three_subjects_two_runs(monkeypatch):
    monkeypatch.setattr(partitions, "_active", None)
    partitions.activate(KEYS, group_size=2)
    yield
    monkeypatch.setattr(partitions, "_active", None)


def test_map_nodes_per_subject_and_run_then_per_group_and_run(three_subjects_two_runs):
    registered = register_pipelines(list(PARTS))
    fmri = {node.name: node for node in registered["fmri"].nodes}
    names = [f"sub-{sid}_run-{run}" for sid, run in KEYS]
    groups = [f"group-{k}_run-{run}" for k in (1, 2) for run in ("1", "2")]  # subjects 01+02, then 03
    assert {f"fmri_statistics_{n}" for n in names} | {f"fmri_normalize_{g}" for g in groups} <= set(fmri)
    assert len(fmri) == len(KEYS) + len(groups) + 5
    assert {f"fmri_run_moments_{n}" for n in names} <= set(fmri["compute_fmri_norm_stats"].inputs)
    assert {f"fmri_group_sum_{g}" for g in groups} <= set(fmri["build_fmri_tensor"].inputs)
    evaluate = {node.name: node for node in registered["evaluate"].nodes}
    assert {f"fmri_group_rows_{g}" for g in groups} <= set(evaluate["intersubject_agreement"].inputs)
    assert "fmri_raw" not in evaluate["intersubject_agreement"].inputs  # no run read again
    assert fmri["fmri_statistics_sub-02_run-2"].func.keywords == {"subject": "02", "run": "2"}
    assert fmri["fmri_normalize_group-1_run-2"].func.keywords == {"subjects": ["01", "02"], "run": "2"}
    assert fmri["fmri_normalize_group-2_run-1"].func.keywords == {"subjects": ["03"], "run": "1"}
    # fmri.keep_decompressed (default): the first pass keeps each run's voxels for its group's node
    assert fmri["fmri_statistics_sub-02_run-2"].outputs == ["fmri_run_moments_sub-02_run-2",
                                                           "fmri_run_voxels_sub-02_run-2"]
    assert {"fmri_run_voxels_sub-01_run-2", "fmri_run_voxels_sub-02_run-2"} <= set(
        fmri["fmri_normalize_group-1_run-2"].inputs)


def test_without_keeping_the_decompressed_voxels_the_second_pass_reads_the_runs(monkeypatch):
    monkeypatch.setattr(partitions, "_active", None)
    partitions.activate(KEYS, group_size=2, keep_decompressed=False)
    fmri = {node.name: node for node in register_pipelines(["fmri"])["fmri"].nodes}
    monkeypatch.setattr(partitions, "_active", None)
    assert fmri["fmri_statistics_sub-02_run-2"].outputs == ["fmri_run_moments_sub-02_run-2"]
    assert not any("voxels" in name for node in fmri.values() for name in node.inputs + node.outputs)
    assert "fmri_raw" in fmri["fmri_normalize_group-1_run-2"].inputs


def test_without_a_session_the_default_experiments_runs_are_used(monkeypatch):
    monkeypatch.setattr(partitions, "_active", None)
    nodes = {node.name for node in register_pipelines(["fmri"])["fmri"].nodes}
    assert {f"fmri_statistics_sub-0{i}_run-1" for i in range(1, 5)} <= nodes  # the demo: 4 subjects, 1 run
    assert "fmri_normalize_group-1_run-1" in nodes and "fmri_normalize_group-2_run-1" not in nodes  # 4 per group


def test_ids_that_would_share_a_partition_name_are_refused():
    with pytest.raises(ValueError, match=r"share the partition name 'sub-a_run-x_run-b'"):
        partition_names([("a_run-x", "b"), ("a", "x_run-b")])


def _fresh_python(code: str) -> str:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_a_run_of_one_pipeline_imports_only_what_its_nodes_need():
    """``kedro run --pipelines=fmri`` builds only the fMRI stage: torch (about 1.5 s of
    every start-up) is not imported, by the pipelines or by the catalog's datasets."""
    probe = ("import sys; from giblet_kedro.pipeline_registry import register_pipelines; "
             "import giblet_kedro.datasets.torch_state; "
             "registered = register_pipelines([{name!r}]); print(sorted(registered), 'torch' in sys.modules)")
    assert _fresh_python(probe.format(name="fmri")) == "['fmri'] False"
    assert _fresh_python(probe.format(name="train")) == "['train'] True"


def test_the_requested_pipelines_are_built_from_their_parts(three_subjects_two_runs):
    every = register_pipelines(list(PARTS))
    nodes = {name: {node.name for node in pipeline.nodes} for name, pipeline in every.items()}
    assert nodes["stimulus"] >= {"inspect_fmri_runs", "split_fmri_trs"}
    assert not any(name.startswith("fmri_statistics_") for name in nodes["stimulus"])
    assert nodes["fmri"] < nodes["train"] < nodes["evaluate"] < nodes["report"] < nodes["__default__"]
    assert nodes["lesion"] - nodes["train"] == {"run_lesions"}
    assert nodes["demo_data"] == {"generate_demo_data"}
    assert nodes["__default__"] == nodes["report"] | {"generate_demo_data"}
    alone = {name: {node.name for node in register_pipelines([name])[name].nodes} for name in ("stimulus", "lesion")}
    assert alone == {name: nodes[name] for name in alone}  # built on its own, the same pipeline


def test_kedro_s_request_survives_the_partitions_changing(monkeypatch):
    """The hook registers the pipelines again for the experiment's partitions; Kedro's
    ``--pipelines`` filter must survive that, or every pipeline is built again."""
    from kedro.framework import project

    monkeypatch.setattr(partitions, "_active", None)
    monkeypatch.setattr(project, "PACKAGE_NAME", "giblet_kedro")
    project.pipelines.set_requested(["fmri"])
    try:
        partitions.activate(KEYS)
        assert requested_pipelines() == ["fmri"]
        assert list(project.pipelines.keys()) == ["fmri"]
    finally:
        project.pipelines.configure(None)


def test_a_partition_s_function_keeps_its_name_through_multiprocessing():
    """ParallelRunner ships nodes with multiprocessing's pickler, which drops a plain
    partial's attributes: Kedro then logs ``<partial>`` and warns at every node."""
    from multiprocessing.reduction import ForkingPickler

    from giblet_kedro.pipelines.fmri.nodes import run_statistics
    from giblet_kedro.pipelines.fmri.pipeline import for_partition

    shipped = pickle.loads(ForkingPickler.dumps(for_partition(run_statistics, subject="02", run="1")))
    assert shipped.__name__ == "run_statistics" and shipped.keywords == {"subject": "02", "run": "1"}
    assert shipped.func is run_statistics

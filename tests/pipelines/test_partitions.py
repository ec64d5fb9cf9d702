"""The fMRI stage's pipeline is generated for the experiment's subjects and runs."""

from __future__ import annotations

import pytest

from giblet_kedro.fmri.partials import partition_names
from giblet_kedro.pipeline_registry import register_pipelines
from giblet_kedro.pipelines import partitions

KEYS = [("01", "1"), ("01", "2"), ("02", "1"), ("02", "2"), ("03", "1"), ("03", "2")]


@pytest.fixture
def three_subjects_two_runs(monkeypatch):
    monkeypatch.setattr(partitions, "_active", None)
    partitions.activate(KEYS)
    yield
    monkeypatch.setattr(partitions, "_active", None)


def test_one_map_node_per_subject_and_run_and_reduces_over_all(three_subjects_two_runs):
    registered = register_pipelines()
    fmri = {node.name: node for node in registered["fmri"].nodes}
    names = [f"sub-{sid}_run-{run}" for sid, run in KEYS]
    assert {f"fmri_statistics_{n}" for n in names} | {f"fmri_normalize_{n}" for n in names} <= set(fmri)
    assert len(fmri) == 2 * len(KEYS) + 5
    assert {f"fmri_run_moments_{n}" for n in names} <= set(fmri["compute_fmri_norm_stats"].inputs)
    assert {f"fmri_run_zscored_{n}" for n in names} <= set(fmri["build_fmri_tensor"].inputs)
    evaluate = {node.name: node for node in registered["evaluate"].nodes}
    assert {f"fmri_run_zscored_{n}" for n in names} <= set(evaluate["intersubject_agreement"].inputs)
    assert "fmri_raw" not in evaluate["intersubject_agreement"].inputs  # no run read again
    statistics = fmri["fmri_statistics_sub-02_run-2"].func
    assert statistics.keywords == {"subject": "02", "run": "2"}


def test_without_a_session_the_default_experiments_runs_are_used(monkeypatch):
    monkeypatch.setattr(partitions, "_active", None)
    nodes = {node.name for node in register_pipelines()["fmri"].nodes}
    assert {f"fmri_statistics_sub-0{i}_run-1" for i in range(1, 5)} <= nodes  # the demo: 4 subjects, 1 run


def test_ids_that_would_share_a_partition_name_are_refused():
    with pytest.raises(ValueError, match=r"share the partition name 'sub-a_run-x_run-b'"):
        partition_names([("a_run-x", "b"), ("a", "x_run-b")])

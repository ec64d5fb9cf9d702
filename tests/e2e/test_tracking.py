"""MLflow tracking through kedro-mlflow (the optional `mlflow` extra, installed by
`make install`): every run is logged to the project's local file store, mlruns/."""

from __future__ import annotations

import os

import pytest

from tests.e2e.conftest import kedro

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow")
pytest.importorskip("kedro_mlflow")


def runs_in(project):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient(f"file://{project / 'mlruns'}")
    experiment = client.get_experiment_by_name("giblet_kedro")
    assert experiment is not None, "no MLflow experiment in the project's mlruns/"
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_each_run_logs_the_spec_overrides_and_fingerprints_to_the_local_store(project):
    kedro(project, "run", "--pipelines=fmri")
    kedro(project, "run", "--pipelines=fmri", "--params", "fmri.mode=per_subject")
    shown = kedro(project, "giblet", "spec", "--params", "fmri.mode=per_subject").stdout
    client, runs = runs_in(project)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    first, second = (r.data for r in runs)
    assert first.params["spec.fmri.mode"] == "cross_subject" and second.params["spec.fmri.mode"] == "per_subject"
    assert first.params["spec.fmri.zscore.ddof"] == "1" and first.params["spec.name"] == "demo"
    assert second.tags["giblet.overrides"] == '{"fmri.mode": "per_subject"}'
    tensor_fp = second.tags["fingerprint.fmri_tensor"]
    assert tensor_fp != first.tags["fingerprint.fmri_tensor"] and tensor_fp in shown  # the compiled view agrees
    assert second.tags["fingerprint.fmri_stats"] == first.tags["fingerprint.fmri_stats"]
    assert (project / "data/05_model_input/fmri_tensor" / tensor_fp / "fmri_train.npy").is_file()
    # the project's own history (no MLflow needed) says the same
    compared = kedro(project, "giblet", "compare", "demo~1", "demo~0").stdout
    assert "fmri.mode" in compared and "fmri_tensor" in compared


def test_several_runs_in_one_python_process_are_separate_mlflow_runs(project, monkeypatch):
    """A notebook runs session after session: each is its own finished MLflow run (kedro-mlflow
    alone leaves its run stacked and the next session would log into it)."""
    from kedro.framework.startup import bootstrap_project

    from tests.e2e.test_hooks import _run

    monkeypatch.chdir(project)
    monkeypatch.delenv("GIBLET_PROJECT_ROOT", raising=False)
    bootstrap_project(project)
    _run(project, experiment="demo")
    _run(project, experiment="demo")
    _run(project, experiment="demo", fmri={"mode": "per_subject"})
    assert mlflow.active_run() is None
    _, runs = runs_in(project)
    assert [(r.info.status, r.data.params["spec.fmri.mode"]) for r in runs] == [
        ("FINISHED", "cross_subject"), ("FINISHED", "cross_subject"), ("FINISHED", "per_subject")]

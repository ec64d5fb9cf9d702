"""Experiment tracking with MLflow, through kedro-mlflow (optional: ``pip install -e '.[mlflow]'``).

kedro-mlflow opens an MLflow run around every pipeline run (``conf/base/mlflow.yml``:
a local file store, ``mlruns/`` in the project, unless ``MLFLOW_TRACKING_URI`` or that
file says otherwise). :class:`MlflowHooks` fills it:

- at the start: the flattened spec (with its ``--params`` overrides) as params
  ``spec.<key path>``, each stage's fingerprint as a tag ``fingerprint.<stage>``, the
  spec file and overrides as tags;
- at the end: the per-epoch losses of rank 0 (``train.<component>``, ``val.<component>``,
  step = epoch), the verification checks and the evaluation and lesion numbers as
  metrics, and the report, its figures, the verification report, the loss curve and the
  r-map NIfTI as artifacts, whichever this run's caches hold.

Without MLflow nothing here is imported; ``kedro giblet runs`` and ``compare`` keep
their own history either way.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from giblet_kedro.spec.compile import CompiledExperiment

log = logging.getLogger(__name__)
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def flat_params(value: Any, prefix: str = "spec") -> dict[str, str]:
    """Nested spec -> ``{"spec.fmri.mode": "cross_subject", ...}`` (lists as JSON)."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for key, item in value.items():
            out |= flat_params(item, f"{prefix}.{key}")
        return out
    text = value if isinstance(value, str) else json.dumps(value)
    return {prefix: text[:MAX_PARAM_LENGTH]}


def epoch_metrics(history: dict) -> list[tuple[str, float, int]]:
    """``(name, value, epoch)`` for every loss component of every epoch (rank 0's history)."""
    rows = []
    for entry in history.get("epochs", []):
        for part in ("train", "val"):
            rows += [(f"{part}.{name}", float(value), int(entry["epoch"]))
                     for name, value in entry.get(part, {}).items() if isinstance(value, int | float)]
    return rows


def run_metrics(compiled: CompiledExperiment) -> dict[str, float]:
    """The verification checks (1 pass, 0 fail), the headline evaluation and lesion numbers
    and every per-modality reconstruction number found in this spec's caches."""
    from giblet_kedro.runs import headline_metrics

    out = {k: float(v) for k, v in headline_metrics(compiled).items()
           if isinstance(v, int | float) and not isinstance(v, bool)}
    report = _json(compiled.cache_dir("verify") / "verification_report.json")
    for check in (report or {}).get("checks", []):
        out[f"verify.{check['check']}"] = float(bool(check["pass"]))
    evaluation = _json(compiled.cache_dir("evaluate") / "evaluation_metrics.json")
    for name, entry in (evaluation or {}).get("reconstruction", {}).items():
        out |= {f"recon.{name}.{k}": float(v) for k, v in entry.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
    lesions = _json(compiled.cache_dir("lesion") / "lesion_metrics.json")
    for region, entry in (lesions or {}).get("regions", {}).items():
        for modality, effect in entry.get("effects", {}).items():
            out[f"lesion.{region}.{modality}.effect"] = float(effect["effect"])
            out[f"lesion.{region}.{modality}.p"] = float(effect["p"])
    return out


def run_artifacts(compiled: CompiledExperiment) -> list[Path]:
    """The files worth keeping with the run: report, figures, reports, r map."""
    wanted = [
        (compiled.cache_dir("report"), ("report.html", "*.png")),
        (compiled.cache_dir("verify"), ("verification_report.json", "verification_summary.md", "loss_curve.png")),
        (compiled.cache_dir("evaluate"), ("evaluation_metrics.json", "voxel_r_map.nii.gz")),
        (compiled.cache_dir("lesion"), ("lesion_metrics.json",)),
    ]
    return sorted({path for folder, patterns in wanted for pattern in patterns for path in folder.glob(pattern)})


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ensure_experiment(context) -> None:
    """Create the experiment of the project's ``mlflow.yml`` if its store lacks it (local
    file stores only: a server handles concurrent creation itself)."""
    import fcntl

    from mlflow.tracking import MlflowClient

    loader = context.config_loader
    loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])
    config = loader["mlflow"]
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (config.get("server") or {}).get("mlflow_tracking_uri") or "mlruns"
    name = ((config.get("tracking") or {}).get("experiment") or {}).get("name") or "Default"
    if "://" in uri and not uri.startswith("file://"):
        return
    folder = Path(uri.removeprefix("file://"))
    folder = folder if folder.is_absolute() else Path(context.project_path) / folder
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".giblet-experiment.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(folder.as_uri())
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name)


def spec_only_mlflow_hook():
    """kedro-mlflow's hook without its per-node parameter logging (registered in place of
    the plugin's own, ``settings.py``).

    :class:`MlflowHooks` logs the whole spec once, key by key (``spec.*``). kedro-mlflow
    would also log each node's ``params:`` inputs, whole sections as text, from whichever
    process runs the node: under ``ParallelRunner`` or Dask a worker's text of a section
    can differ from the main process's (a typed spec section against its plain dict), and
    MLflow refuses a param that changes value, failing the run."""
    from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

    class SpecOnlyMlflowHook(MlflowHook):
        def _log_param(self, name: str, value: Any) -> None:
            return None

    return SpecOnlyMlflowHook()


class MlflowHooks:
    """Logs the spec, fingerprints, losses, metrics and artifacts into kedro-mlflow's run.

    Ordered around kedro-mlflow's own hooks: it opens the run before the pipeline
    (``trylast`` here) and closes it after (``tryfirst`` here)."""

    def __init__(self) -> None:
        self._compiled: CompiledExperiment | None = None
        self._run_id: str | None = None

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        """Before kedro-mlflow looks its experiment up: create it once, under a lock, so two
        runs starting at once on a fresh store do not both try to create it."""
        self._context = context
        import mlflow

        self._outside_run = mlflow.active_run() is not None  # an orchestrator's run: never ended here
        try:
            ensure_experiment(context)
        except Exception as exc:  # tracking must never stop a run; kedro-mlflow reports its own errors
            log.warning("MLflow: could not prepare the experiment: %s", exc)

    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        import mlflow

        from giblet_kedro.spec.resolvers import compiled

        self._compiled = None
        if mlflow.active_run() is None:  # tracking is off for this pipeline (mlflow.yml)
            return
        self._run_id = mlflow.active_run().info.run_id
        self._compiled = compiled(self._context.params["experiment_name"])
        try:
            client = mlflow.tracking.MlflowClient()
            logged = client.get_run(self._run_id).data.params
            params = {k: v for k, v in flat_params(self._compiled.spec.model_dump(mode="json")).items()
                      if k not in logged}  # an orchestrator's run may already hold the spec
            mlflow.log_params(params)
            names = "+".join(run_params.get("pipeline_names") or ["__default__"])
            mlflow.set_tags({f"fingerprint.{stage}": fp for stage, fp in self._compiled.fingerprints.items()}
                            | {"giblet.experiment": self._compiled.spec.name,
                               "giblet.spec_file": str(self._compiled.spec_file),
                               "giblet.overrides": json.dumps(self._compiled.describe()["overrides"]),
                               "mlflow.runName": f"{self._compiled.spec.name}: {names}"})
        except Exception as exc:  # tracking never stops a run
            log.warning("MLflow: could not log the spec of run %s: %s", self._run_id, exc)

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self) -> None:
        import mlflow

        if self._compiled is None or self._run_id is None:
            return
        try:
            from mlflow.entities import Metric

            client = mlflow.tracking.MlflowClient()
            history = _json(self._compiled.cache_dir("train") / "history.json") or {}
            now = int(time.time() * 1000)
            metrics = [Metric(name, value, now, epoch) for name, value, epoch in epoch_metrics(history)]
            metrics += [Metric(name, value, now, 0) for name, value in run_metrics(self._compiled).items()]
            for first in range(0, len(metrics), 1000):  # MLflow's batch limit
                client.log_batch(self._run_id, metrics=metrics[first:first + 1000])
            for path in run_artifacts(self._compiled):
                client.log_artifact(self._run_id, str(path), artifact_path=path.parent.parent.name)
            log.info("MLflow: logged run %s to %s", self._run_id, mlflow.get_tracking_uri())
        except Exception as exc:  # tracking never stops a run
            log.warning("MLflow: could not log the results of run %s: %s", self._run_id, exc)
        self._leave_one_on_the_stack()

    @hook_impl(tryfirst=True)
    def on_pipeline_error(self) -> None:
        self._leave_one_on_the_stack()

    def _leave_one_on_the_stack(self) -> None:
        """kedro-mlflow re-enters its run at every node (``start_run(run_id, nested=True)``),
        which MLflow 3 stacks, and ends it once: in a notebook the next session would then
        log into this run. Leave it on the stack exactly once, for kedro-mlflow to end."""
        import mlflow

        if self._run_id is None or self._outside_run:
            return
        while mlflow.active_run() is not None and mlflow.active_run().info.run_id == self._run_id:
            mlflow.end_run()
        mlflow.start_run(run_id=self._run_id)
        self._run_id = None

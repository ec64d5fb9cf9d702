"""Kedro hooks: what must hold on every path that runs a pipeline.

``kedro run``, ``KedroSession.run()`` from Python, ``kedro ipython`` and notebooks all go
through these (registered in ``settings.py``), not only the project's CLI:

- before the run: the whole spec (with its ``--params`` overrides) and, for real data,
  every input header is checked, so a mistake is one message before any node runs;
  a spec that generates its data gets its demo data first;
- cache reuse: nodes whose outputs exist are left out, which fingerprinted cache paths
  make safe; ``recompute=True`` in the runtime params (``kedro run --recompute``) turns it off;
- locking: each node's output folders are locked while it runs, so two runs on one data
  folder never write the same cache at once (the project's ``LockingRunner`` does this
  itself and also skips what another run finished meanwhile);
- logging: each run writes its own log file, ``data/09_logs/<date>-<time>-<pid>.log``
  (``conf/logging.yml``);
- after the run: the run history (``kedro giblet runs``) and the registry of run specs
  (``kedro giblet caches --prune`` keeps their caches).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from giblet_kedro.datasets.atomic import atomic_path
from giblet_kedro.errors import GibletError
from giblet_kedro.logs import start_run_log
from giblet_kedro.paths import data_dir
from giblet_kedro.preflight import preflight, user_error
from giblet_kedro.spec.compile import CompiledExperiment

log = logging.getLogger(__name__)

# Spec files (with overrides) that were run here, for `kedro giblet caches --prune`.
RUN_REGISTRY = ".giblet/experiments.json"
DEMO_NODE = "generate_demo_data"


def record_experiment(compiled: CompiledExperiment) -> None:
    """Remember that this spec (reference: file plus overrides) was run here."""
    registry = data_dir() / RUN_REGISTRY
    try:
        known = json.loads(registry.read_text())
    except (OSError, ValueError):
        known = {}
    known[compiled.reference] = {"name": compiled.spec.name, "fingerprints": compiled.fingerprints}
    with atomic_path(registry) as tmp:
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))


def _drop_nodes_with_outputs(pipeline, catalog) -> int:
    """Leave out, in place, the nodes Kedro's ``only_missing_outputs`` would leave out.

    The session hands this very pipeline object to the runner after this hook, so the
    filtered pipeline's state replaces the original's (``tests/e2e/test_kedro_runs.py`` fails if a
    Kedro release changes that). Returns how many nodes were left out."""
    from kedro.runner import SequentialRunner

    before = len(pipeline.nodes)
    filtered = SequentialRunner()._filter_pipeline_for_missing_outputs(pipeline, catalog)
    if len(filtered.nodes) != before:
        pipeline.__dict__.update(filtered.__dict__)
    return before - len(pipeline.nodes)


def _fmri_section(reference: str):
    """The experiment's ``fmri`` section as compiled (a BIDS spec finds its subjects and
    runs in its folder); the spec's own if it does not compile yet (preflight then reports
    why, before any node runs). An invalid spec raises its own error here."""
    from giblet_kedro.spec.load import load_spec
    from giblet_kedro.spec.resolvers import compiled

    try:
        return compiled(reference).spec.fmri
    except GibletError:
        return load_spec(reference)[0].fmri


class GibletHooks:
    """Preflight, demo data, cache reuse, locking and run history for every run."""

    def __init__(self) -> None:
        self._context = None
        self._compiled: CompiledExperiment | None = None
        self._locks: dict[str, contextlib.ExitStack] = {}
        self._lock_nodes = False

    @hook_impl
    def after_context_created(self, context) -> None:
        """Validate the spec (with its overrides) first: a mistake is the spec's own error,
        not a failure to resolve the catalog that reads it."""
        from giblet_kedro.config_loader import GibletConfigLoader
        from giblet_kedro.pipelines.partitions import activate

        self._context = context
        if isinstance(context.config_loader, GibletConfigLoader):
            fmri = _fmri_section(context.config_loader.run_reference())
            # the fMRI stage's nodes: per subject and run, then per group of subjects and run
            activate(fmri.run_keys, fmri.subjects_per_group, fmri.keep_decompressed)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        from giblet_kedro.runner import LockingRunner
        from giblet_kedro.validation.tables import build_schemas

        # A file per run, not per context: notebooks create contexts without running anything.
        start_run_log(Path(self._context.project_path))
        reference = self._context.params["experiment_name"]
        compiled = self._compiled = preflight(reference)
        if "ParallelRunner" in str(run_params.get("runner", "")):  # Kedro passes the runner's repr
            build_schemas()  # before its workers are forked (see its docstring)
        names = run_params.get("pipeline_names") or ["__default__"]
        if "lesion" in names and compiled.spec.lesion is None:
            raise GibletError(f"{compiled.spec_file}: the lesion pipeline needs a 'lesion' section: lesion: "
                              "{regions: {NAME: {mask: FILE} or {atlas: FILE, labels: [..]}}, method: zero}")
        if "predict" in names and compiled.spec.predict.stimulus is None:
            raise GibletError(f"{compiled.spec_file}: the predict pipeline needs a movie: predict.stimulus (e.g. "
                              "--params predict.stimulus=/path/to/movie.mp4); the spec has no stimulus.video or "
                              "stimulus.audio to default to")
        recompute = bool((run_params.get("runtime_params") or {}).get("recompute"))
        node_names = {node.name for node in pipeline.nodes}
        if compiled.spec.demo is not None and DEMO_NODE not in node_names:
            from giblet_kedro.pipelines.demo_data.pipeline import create_pipeline as demo_pipeline

            # The run reads the demo data: generate them first (once; locked like any node).
            # Kedro types only the requested pipelines' parameters; the demo node's are typed here.
            for section in ("demo", "fmri"):
                typed = getattr(compiled.spec, section)
                if not isinstance(catalog.load(f"params:{section}"), type(typed)):
                    catalog[f"params:{section}"] = typed
            LockingRunner().run(demo_pipeline(), catalog, only_missing_outputs=not recompute)
        if not recompute and not run_params.get("only_missing_outputs"):
            skipped = _drop_nodes_with_outputs(pipeline, catalog)
            if skipped:
                log.info("reusing the caches of %d node(s) whose outputs exist (fingerprinted paths: "
                         "never stale); recompute with runtime param recompute=True", skipped)
        self._lock_nodes = "LockingRunner" not in str(run_params.get("runner"))

    @hook_impl
    def before_node_run(self, node, catalog) -> None:
        if not self._lock_nodes:
            return
        from giblet_kedro.runner import locked, output_folders

        stack = contextlib.ExitStack()
        stack.enter_context(locked(output_folders(node, catalog), node.name))
        self._locks[node.name] = stack

    @hook_impl
    def after_node_run(self, node) -> None:
        stack = self._locks.pop(node.name, None)
        if stack is not None:
            stack.close()

    @hook_impl
    def on_node_error(self, node) -> None:
        self.after_node_run(node)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any]) -> None:
        from giblet_kedro.runs import record_run

        if self._compiled is None:
            return
        try:
            record_experiment(self._compiled)
            record_run(self._compiled, list(run_params.get("pipeline_names") or ["__default__"]))
        except OSError as exc:  # the run itself succeeded; only its history entry is missing
            log.warning("could not record the run in the history: %s", exc)

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        for stack in self._locks.values():
            stack.close()
        self._locks.clear()
        mistake = user_error(error)
        if mistake is not None:
            log.error("%s", mistake)

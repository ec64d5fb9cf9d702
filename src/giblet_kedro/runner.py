"""Runners: a sequential one for shared data folders (no duplicated work between
concurrent runs), and one that spreads nodes over a Dask cluster.

Two ``kedro run``s that need the same cache (the same spec twice, or two specs sharing a
stage, on one machine or on two nodes over a shared folder) would otherwise both compute
it: Kedro decides what to skip once, at the start. This runner takes an exclusive lock
on each node's output folders (``<stage>/<fingerprint>/.lock``) while the node runs. A
run that had to wait for the lock looks again once it has it: if the other run has
written every output meanwhile (and they are intact), the node is skipped. Locks are
``flock``s, released by the kernel when their holder dies, so a killed run never
blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections import Counter
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

from kedro.runner import AbstractRunner, SequentialRunner
from kedro.runner.task import Task

from giblet_kedro.compute import available_cores

log = logging.getLogger(__name__)


def output_folders(node, catalog) -> list[Path]:
    """The folders a node's persistent outputs are written to (sorted: a fixed lock order)."""
    folders = set()
    for name in node.outputs:
        if name not in catalog:
            continue
        dataset = catalog.get(name)
        for attribute in ("_filepath", "_folder"):
            path = getattr(dataset, attribute, None)
            if path is not None:
                folders.add(Path(path).parent)
        for path in (getattr(dataset, "_paths", None) or {}).values():
            folders.add(Path(path).parent)
    return sorted(folders)


@contextlib.contextmanager
def locked(folders: list[Path], what: str) -> Iterator[bool]:
    """Hold an exclusive lock on each folder; yields whether we had to wait for one."""
    waited = False
    with contextlib.ExitStack() as stack:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(open(folder / ".lock", "a+"))  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another run"
                log.warning("waiting for %s, which is writing %s (%s)", holder, folder, what)
                fcntl.flock(handle, fcntl.LOCK_EX)
                waited = True
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
        yield waited


def run_locked(node, catalog, hook_manager, is_async: bool, run_id: str | None) -> bool:
    """Run ``node`` holding its output folders' locks; skip it (False) if another run
    wrote all its outputs while this one waited for them."""
    with locked(output_folders(node, catalog), node.name) as waited:
        if waited and node.outputs and all(catalog.exists(name) for name in node.outputs):
            log.info("Skipping node %s: another run wrote its outputs while this one waited", node.name)
            return False
        Task(node=node, catalog=catalog, hook_manager=hook_manager, is_async=is_async, run_id=run_id).execute()
    return True


class LockingRunner(SequentialRunner):
    """``SequentialRunner`` that locks each node's output folders while it runs and skips
    a node whose outputs another run wrote while this one waited."""

    def _run(self, pipeline, catalog, hook_manager=None, run_id=None) -> None:
        nodes = pipeline.nodes
        self._validate_catalog(catalog)
        self._validate_nodes(nodes)
        self._set_manager_datasets(catalog)
        load_counts = Counter(chain.from_iterable(n.inputs for n in nodes))
        done = []
        for node in nodes:
            try:
                run_locked(node, catalog, hook_manager, self._is_async, run_id)
            except Exception:
                self._suggest_resume_scenario(pipeline, done, catalog)
                raise
            done.append(node)
            self._logger.info("Completed node: %s", node.name)
            self._logger.info("Completed %d out of %d tasks", len(done), len(nodes))
            self._release_datasets(node, catalog, load_counts, pipeline)


# --------------------------------------------------------------------------- Dask
SCHEDULER_ENV = "GIBLET_DASK_SCHEDULER"  # address of a running scheduler, e.g. tcp://node12:8786
WORKERS_ENV = "GIBLET_DASK_WORKERS"  # workers of the LocalCluster started otherwise

_worker_project: list[str] = []  # the project this worker process was bootstrapped for


def _bootstrap_worker(project_path: str) -> None:
    """Make a Dask worker process a Kedro project process once (settings, hooks, logging)."""
    if _worker_project == [project_path]:
        return
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(Path(project_path))
    _worker_project[:] = [project_path]


def run_node_on_worker(node, catalog, is_async: bool, run_id: str | None, project_path: str, *dependencies) -> str:
    """One node on a Dask worker (``dependencies``: the futures of the nodes it waits for,
    passed only so that Dask schedules it after them): locked like the LockingRunner's
    nodes, skipped if another run wrote its outputs while this one waited. Returns the
    node's name."""
    from kedro.framework.hooks.manager import _create_hook_manager, _register_hooks, _register_hooks_entry_points
    from kedro.framework.project import settings

    _bootstrap_worker(project_path)
    hook_manager = _create_hook_manager()
    _register_hooks(hook_manager, settings.HOOKS)
    _register_hooks_entry_points(hook_manager, settings.DISABLE_HOOKS_FOR_PLUGINS)
    run_locked(node, catalog, hook_manager, is_async, run_id)
    return node.name


class DaskRunner(AbstractRunner):
    """Runs each node as a task on a ``dask.distributed`` cluster, after the nodes it
    depends on (Kedro's documented DaskRunner pattern): ``kedro run
    --runner=giblet_kedro.runner.DaskRunner``.

    The cluster: the scheduler at ``$GIBLET_DASK_SCHEDULER`` (started by hand, by
    dask-jobqueue's ``SLURMCluster``, ...; its workers need this project installed and
    its data folder at the same path), else a ``LocalCluster`` of ``$GIBLET_DASK_WORKERS``
    single-threaded worker processes (default: one per core). Data between nodes go
    through the catalog's files, never through the scheduler: a dataset that only lives in
    memory cannot cross machines and is refused. Each node locks its output folders as
    under :class:`LockingRunner`.
    """

    def __init__(self, is_async: bool = False, address: str | None = None, n_workers: int | None = None):
        super().__init__(is_async=is_async)
        self._address = address or os.environ.get(SCHEDULER_ENV)
        self._n_workers = n_workers or int(os.environ.get(WORKERS_ENV, 0)) or available_cores()

    def _get_executor(self, max_workers: int) -> None:
        return None  # Dask schedules the tasks

    @contextlib.contextmanager
    def _client(self) -> Iterator:
        from distributed import Client, LocalCluster

        if self._address:
            with Client(self._address) as client:
                yield client
            return
        with LocalCluster(n_workers=self._n_workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client

    def _run(self, pipeline, catalog, hook_manager=None, run_id=None) -> None:
        from distributed import as_completed
        from kedro.io import MemoryDataset

        from giblet_kedro.paths import project_root

        nodes = pipeline.nodes
        shared = [name for name in pipeline.datasets() - pipeline.inputs()
                  if isinstance(catalog.get(name, fallback_to_runtime_pattern=True), MemoryDataset)]
        if shared:
            raise ValueError(f"DaskRunner: {sorted(shared)} would live only in a worker's memory; give them a "
                             "catalog entry with a file, or run with the default runner")
        dependencies = pipeline.node_dependencies
        project = str(project_root())
        with self._client() as client:
            log.info("DaskRunner: %d nodes on %s", len(nodes), client.scheduler.address if client.scheduler else "?")
            futures = {}
            for node in nodes:  # topologically sorted: a node's dependencies are submitted first
                waits = [futures[parent] for parent in dependencies[node]]
                futures[node] = client.submit(run_node_on_worker, node, catalog, self._is_async, run_id, project,
                                              *waits, key=f"{node.name}-{run_id}", pure=False)
            done = 0
            for future in as_completed(list(futures.values())):
                try:
                    name = future.result()
                except Exception:
                    for other in futures.values():
                        other.cancel()
                    raise
                done += 1
                self._logger.info("Completed node: %s", name)
                self._logger.info("Completed %d out of %d tasks", done, len(nodes))

"""A sequential runner for shared data folders: no duplicated work between concurrent runs.

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

from kedro.runner import SequentialRunner
from kedro.runner.task import Task

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
            with locked(output_folders(node, catalog), node.name) as waited:
                if waited and node.outputs and all(catalog.exists(name) for name in node.outputs):
                    log.info("Skipping node %s: another run wrote its outputs while this one waited", node.name)
                else:
                    try:
                        Task(node=node, catalog=catalog, hook_manager=hook_manager, is_async=self._is_async,
                             run_id=run_id).execute()
                    except Exception:
                        self._suggest_resume_scenario(pipeline, done, catalog)
                        raise
            done.append(node)
            self._logger.info("Completed node: %s", node.name)
            self._logger.info("Completed %d out of %d tasks", len(done), len(nodes))
            self._release_datasets(node, catalog, load_counts, pipeline)

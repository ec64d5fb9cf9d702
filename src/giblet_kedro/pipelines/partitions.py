"""Which (subject, run) partitions the registered pipelines are generated for.

The fMRI stage has one node per subject and run (:mod:`giblet_kedro.fmri.partials`), so
the pipelines depend on the experiment, which Kedro only knows once a session has its
runtime params. The project hook records the experiment's partitions when the context is
created (:meth:`giblet_kedro.hooks.GibletHooks.after_context_created`), before Kedro first
reads the pipelines, and has Kedro register them again when they changed. Outside a
session (``register_pipelines()`` called directly), the default experiment's are used.
"""

from __future__ import annotations

import yaml

from giblet_kedro.fmri.sources import RunKey
from giblet_kedro.paths import project_root

_active: list[RunKey] | None = None


def activate(run_keys: list[RunKey]) -> None:
    """Generate the pipelines for these partitions from now on (Kedro re-registers them
    on its next read when they changed)."""
    global _active
    if run_keys == _active:
        return
    _active = list(run_keys)
    from kedro.framework.project import PACKAGE_NAME, pipelines

    if PACKAGE_NAME:
        pipelines.configure(f"{PACKAGE_NAME}.pipeline_registry")


def active_partitions() -> list[RunKey]:
    """The partitions of the experiment this process runs (the default one if none yet)."""
    if _active is not None:
        return _active
    from giblet_kedro.spec.load import load_spec

    globals_file = project_root() / "conf" / "base" / "globals.yml"
    default = (yaml.safe_load(globals_file.read_text()) or {}).get("default_experiment", "demo")
    spec, _ = load_spec(default)
    return spec.fmri.run_keys

"""Which partitions the registered pipelines are generated for.

The fMRI stage has one node per subject and run, then per group of subjects and run
(:mod:`giblet_kedro.fmri.partials`), so
the pipelines depend on the experiment, which Kedro only knows once a session has its
runtime params. The project hook records the experiment's partitions when the context is
created (:meth:`giblet_kedro.hooks.GibletHooks.after_context_created`), before Kedro first
reads the pipelines, and has Kedro register them again when they changed. Outside a
session (``register_pipelines()`` called directly), the default experiment's are used.
"""

from __future__ import annotations

import yaml

from giblet_kedro.fmri.partials import Partitions
from giblet_kedro.fmri.sources import RunKey
from giblet_kedro.paths import project_root
from giblet_kedro.spec.schema import FmriSpec

_active: Partitions | None = None
DEFAULT_GROUP_SIZE: int = FmriSpec.model_fields["subjects_per_group"].default
DEFAULT_KEEP: bool = FmriSpec.model_fields["keep_decompressed"].default


def activate(run_keys: list[RunKey], group_size: int = DEFAULT_GROUP_SIZE,
             keep_decompressed: bool = DEFAULT_KEEP) -> None:
    """Generate the pipelines for these partitions (the experiment's ``fmri.run_keys``,
    ``fmri.subjects_per_group`` and ``fmri.keep_decompressed``) from now on (Kedro
    re-registers them on its next read when they changed)."""
    global _active
    partitions = Partitions(tuple(run_keys), group_size, keep_decompressed)
    if partitions == _active:
        return
    _active = partitions
    from kedro.framework.project import PACKAGE_NAME, pipelines

    if PACKAGE_NAME:
        requested = kedro_request()  # configure() forgets it
        pipelines.configure(f"{PACKAGE_NAME}.pipeline_registry")
        pipelines.set_requested(requested)


def kedro_request() -> list[str] | None:
    """The pipeline names ``KedroSession.run`` asked Kedro's registry for, or None. Kedro
    1.7 keeps them on its private ``_requested_pipelines`` (its own ``find_pipelines``
    reads them there); ``tests/pipelines/test_partitions.py`` fails if that moves."""
    from kedro.framework.project import pipelines

    return getattr(pipelines, "_requested_pipelines", None)


def active_partitions() -> Partitions:
    """The partitions of the experiment this process runs (the default one if none yet)."""
    if _active is not None:
        return _active
    from giblet_kedro.spec.load import load_spec

    globals_file = project_root() / "conf" / "base" / "globals.yml"
    default = (yaml.safe_load(globals_file.read_text()) or {}).get("default_experiment", "demo")
    spec, _ = load_spec(default)
    return Partitions(tuple(spec.fmri.run_keys), spec.fmri.subjects_per_group, spec.fmri.keep_decompressed)

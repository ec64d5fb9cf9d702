"""OmegaConf resolvers: how ``catalog.yml`` and ``parameters.yml`` see the compiled spec.

Kedro's custom resolvers cannot read ``parameters``, but they can receive
``${runtime_params:experiment,...}`` as an argument, so the experiment chosen with
``--params experiment=NAME_OR_PATH`` reaches them:

- ``${giblet.param:fmri,<experiment>}``: a spec section (paths resolved), for nodes;
- ``${giblet.cache:fmri_stats,<experiment>}``: the stage's fingerprinted cache folder;
- ``${giblet.files:fmri.subjects,<experiment>}``: resolved input files, id -> path;
- ``${giblet.value:fmri.clean.confounds.strategy,<experiment>}``: one value by its key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from giblet_kedro.spec.compile import CompiledExperiment, compile_spec
from giblet_kedro.spec.load import load_spec
from giblet_kedro.spec.reference import parse_reference

_MEMO: dict[tuple, tuple[CompiledExperiment, tuple]] = {}
_LOCK = threading.Lock()


def _input_signature(result: CompiledExperiment) -> tuple:
    """(path, size, mtime) of every resolved input file (fMRI and stimulus); None for a
    missing one."""
    signature = []
    for path in result.spec.input_files().values():
        try:
            stat = Path(path).stat()
            signature.append((path, stat.st_size, stat.st_mtime_ns))
        except OSError:
            signature.append((path, None))
    return tuple(signature)


def compiled(experiment: str) -> CompiledExperiment:
    """Compile ``experiment`` once per process while its spec file and input files are
    unchanged (a replaced input is re-hashed: digests have their own stat-keyed cache)."""
    spec, path = load_spec(str(experiment))
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, spec.model_dump_json())
    with _LOCK:
        hit = _MEMO.get(key)
    if hit is not None and _input_signature(hit[0]) == hit[1]:
        return hit[0]
    result = compile_spec(spec, path, check_files=False, overrides=parse_reference(str(experiment))[1])
    with _LOCK:
        _MEMO[key] = (result, _input_signature(result))
    return result


def param(section: str, experiment: str) -> Any:
    return compiled(experiment).params(section)


def cache(stage: str, experiment: str) -> str:
    return str(compiled(experiment).cache_dir(stage))


def files(key: str, experiment: str) -> dict[str, str]:
    section, _, field = key.partition(".")
    part = getattr(compiled(experiment).spec, section)
    return {} if part is None else dict(getattr(part, field))  # an optional section left out: no files


def value(key: str, experiment: str) -> Any:
    """One value of the compiled spec by its dotted key (None where a section is absent)."""
    node: Any = compiled(experiment).spec
    for part in key.split("."):
        node = getattr(node, part, None) if node is not None else None
    return node.model_dump(mode="json") if hasattr(node, "model_dump") else node


RESOLVERS: dict[str, Callable[..., Any]] = {
    "giblet.param": param,
    "giblet.value": value,
    "giblet.cache": cache,
    "giblet.files": files,
}

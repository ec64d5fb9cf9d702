"""An experiment reference: which spec file, with which ``--params`` overrides.

``kedro run --params experiment=sherlock,train.epochs=50,fmri.mode=per_subject`` names a
spec (``sherlock``) and overrides two of its keys. Kedro's CLI hands the overrides over
as nested runtime parameters (``{"train": {"epochs": 50}, ...}``); they are applied to
the spec's YAML *before* validation, so fingerprints, caches, the compiled view and the
run history all see the overridden spec.

The spec and its overrides travel through the catalog and parameter resolvers as one
string, the *reference*: the spec's absolute path, then, when there are overrides,
``OVERRIDES_MARK`` and the overrides as URL-safe base64 JSON (resolver arguments must
not contain commas or colons). :func:`make_reference` and :func:`parse_reference` are
inverse.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from giblet_kedro.errors import SpecError

OVERRIDES_MARK = "#overrides="
# Runtime parameters that are the project's own, not spec keys.
PROJECT_RUNTIME_PARAMS = frozenset({"experiment", "recompute"})


def split_runtime_params(runtime_params: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Kedro runtime params -> ``(project params, spec overrides)``.

    ``experiment`` and ``recompute`` are the project's; every other key overrides the spec
    (an unknown one is reported by the spec's validation, like a typo in the file).
    """
    project, overrides = {}, {}
    for key, value in (runtime_params or {}).items():
        (project if key in PROJECT_RUNTIME_PARAMS else overrides)[key] = value
    return project, overrides


def make_reference(spec: str, overrides: Mapping[str, Any] | None = None) -> str:
    """A spec name or path plus overrides, as one resolver-safe string."""
    if not overrides:
        return str(spec)
    payload = json.dumps(_plain(overrides), sort_keys=True, separators=(",", ":")).encode()
    return f"{spec}{OVERRIDES_MARK}{base64.urlsafe_b64encode(payload).decode()}"


def parse_reference(reference: str) -> tuple[str, dict[str, Any]]:
    """Inverse of :func:`make_reference`: ``(spec name or path, nested overrides)``."""
    spec, mark, encoded = str(reference).partition(OVERRIDES_MARK)
    if not mark:
        return spec, {}
    return spec, json.loads(base64.urlsafe_b64decode(encoded.encode()))


def flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 50}}`` -> ``{"train.epochs": 50}`` (for messages and display)."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{path}.")
        else:
            flat[path] = value
    return flat


def describe_overrides(overrides: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in flatten(overrides).items())


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], source: str,
                    prefix: str = "") -> dict[str, Any]:
    """The spec's YAML mapping with ``overrides`` merged in (a new dict; ``raw`` is kept).

    Mappings merge key by key; any other value replaces what the spec had (a list is
    replaced whole). Overriding inside a key whose spec value is not a mapping (say
    ``fmri.mode.x=1``) is an error naming the key.
    """
    merged = dict(raw)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and value:
            if current is None:
                current = {}
            if not isinstance(current, Mapping):
                raise SpecError(
                    f"invalid experiment spec {source}: {prefix}{key} is {current!r} in the spec, not a "
                    f"section with keys; override {prefix}{key} itself"
                )
            merged[key] = apply_overrides(dict(current), value, source, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


def _plain(value: Any) -> Any:
    """JSON-able copy of OmegaConf containers and tuples."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

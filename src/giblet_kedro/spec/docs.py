"""The spec reference (``docs/spec-reference.md``) and JSON Schema, generated from the schema.

``render_reference()`` walks :class:`~giblet_kedro.spec.schema.ExperimentSpec` section by
section: each section's docstring, then one row per key with its type and accepted
values, its default, and an example spec. ``json_schema()`` is pydantic's JSON Schema,
for editor completion (``# yaml-language-server: $schema=...`` at the top of a spec).
``tests/spec/test_docs.py`` fails when either file is stale or misses a key.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from giblet_kedro.spec.schema import ExperimentSpec

REFERENCE_FILE = Path("docs") / "spec-reference.md"
SCHEMA_FILE = Path("docs") / "spec.schema.json"

# A full spec, shown at the top of the reference (it must validate: tested).
EXAMPLE = """\
# yaml-language-server: $schema=spec.schema.json
name: sherlock_5sub
seed: 0
fmri:
  subjects: {pattern: "sherlock/sub-{id}_bold.nii.gz", ids: ["01", "02", "03", "04", "05"]}
  mask: auto
  tr: 1.5
  trs: [0, 946]
  clean: {detrend: true, high_pass_hz: 0.008}
  zscore: {ddof: 1}
  mode: cross_subject
  split: {val: 0.1, test: 0.1, gap_trs: auto}
stimulus:
  video: {path: sherlock/movie.mp4, size: [160, 90], frames_per_tr: 3}
  audio: {path: sherlock/movie.mp4, model: encodec_24khz, bandwidth: 3.0, weights: null}
  text: {annotations: sherlock/segments.xlsx, columns: ["Scene Details - A Level"], model: ViT-B-32,
         weights: laion2b_s34b_b79k}
  hrf: {kind: glover, delay_s: 0, slice_time_ref: 0.5}
model: {bottleneck: voxels, rank: 256, hidden: 1024, dropout: 0.3}
loss: {normalize: variance, weights: {video: 1, audio: 1, text: 1, fmri: 1}}
train: {epochs: 50, batch_size: 2, lr: 1.0e-3, precision: bf16, devices: auto}
verify: {min_loss_drop: 0.05, drop_within_epochs: 3}
lesion:
  regions: {visual: {atlas: atlas.nii.gz, labels: [1, 2]}}
  method: zero
"""


def _constraints(metadata: list[Any]) -> list[str]:
    out = []
    for item in metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(item, attr, None)
            if value is not None and isinstance(item, at.Gt | at.Ge | at.Lt | at.Le | at.Interval):
                out.append(f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}")
        if isinstance(item, at.MinLen) and item.min_length:
            out.append(f"at least {item.min_length} item{'s' if item.min_length > 1 else ''}")
        if isinstance(item, at.MaxLen):
            out.append(f"at most {item.max_length} characters")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            out.append(f"matching `{pattern}`")
    return out


def describe_type(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A type annotation as a reader would say it: ``integer > 0``, ``one of: a, b``..."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return describe_type(args[0], [*args[1:], *(metadata or [])])
    extra = list(dict.fromkeys(_constraints(metadata or [])))
    suffix = f" ({', '.join(extra)})" if extra else ""
    if origin is Literal:
        return "one of: " + ", ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (Union, types.UnionType):
        parts = [describe_type(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return (text + " or `null`" if type(None) in args else text) + suffix
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"[{', '.join(describe_type(a) for a in args)}]" + suffix
        return f"list of {describe_type(args[0])}" + suffix
    if origin is dict:
        return f"mapping {describe_type(args[0])} -> {describe_type(args[1])}" + suffix
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"section [{annotation.__name__}](#{annotation.__name__.lower()})"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "`null`"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation))) + suffix


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value, default=str)}`"


def _models_in(annotation: Any, keyed: bool = False) -> Iterator[tuple[type[BaseModel], bool]]:
    """Section models inside an annotation, each with whether it sits in a mapping's values."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation, keyed
        return
    for arg in get_args(annotation):
        yield from _models_in(arg, keyed or get_origin(annotation) is dict)


def sections(model: type[BaseModel] = ExperimentSpec, path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """``(key path, model)`` for the spec and every nested section, depth first; a
    section reached through a mapping is shown as ``<key>`` (``fmri.runs.<key>``)."""
    yield path or "(top level)", model
    hints = typing.get_type_hints(model, include_extras=True)
    for name, field in model.model_fields.items():
        for sub, keyed in dict.fromkeys(_models_in(hints.get(name, field.annotation))):
            sub_path = f"{path + '.' if path else ''}{name}{'.<key>' if keyed else ''}"
            yield from sections(sub, sub_path)


def key_paths() -> list[str]:
    """Every key the spec accepts, as a dotted path (``fmri.split.gap_trs``)."""
    paths = []
    for path, model in sections():
        prefix = "" if path == "(top level)" else path + "."
        paths += [prefix + name for name in model.model_fields]
    return paths


def render_reference() -> str:
    """The whole spec reference as Markdown."""
    lines = [
        "# Experiment spec reference",
        "",
        "Generated from the schema (`src/giblet_kedro/spec/schema.py`) by `make docs`;",
        "`tests/spec/test_docs.py` fails when it is out of date. Every section forbids unknown",
        "keys. Relative paths resolve against `data/01_raw/`; `{demo}` is the demo generator's",
        "folder. Any key can be overridden on the command line with Kedro's syntax:",
        "`kedro run --params experiment=NAME,train.epochs=50,fmri.mode=per_subject`.",
        "For completion and checking in an editor, put",
        "`# yaml-language-server: $schema=<path to>/docs/spec.schema.json` at the top of a spec",
        "(`kedro giblet schema` writes that file).",
        "",
        "## A complete example",
        "",
        "```yaml",
        EXAMPLE.rstrip(),
        "```",
        "",
    ]
    seen: set[type[BaseModel]] = set()
    all_sections = list(sections())
    shared = {path for path, _ in all_sections if sum(p == path for p, _ in all_sections) > 1}
    for path, model in all_sections:  # a path with several kinds (features) names each
        lines += [f"## `{path}`" + (f" ({model.__name__})" if path in shared else ""), ""]
        if model in seen:
            lines += [f"<a id=\"{model.__name__.lower()}-{len(seen)}\"></a>Same keys as above "
                      f"([{model.__name__}](#{model.__name__.lower()})).", ""]
            continue
        seen.add(model)
        lines += [f"<a id=\"{model.__name__.lower()}\"></a>{model.__name__}: "
                  + inspect.cleandoc(model.__doc__ or "").replace("\n\n", "\n\n"), ""]
        lines += ["| key | type and accepted values | default |", "| --- | --- | --- |"]
        hints = typing.get_type_hints(model, include_extras=True)
        for name, field in model.model_fields.items():
            text = describe_type(hints.get(name, field.annotation), list(field.metadata)).replace("|", "\\|")
            lines.append(f"| `{name}` | {text} | {_default(field)} |")
        lines.append("")
    return "\n".join(lines)


def json_schema() -> str:
    """The spec's JSON Schema (draft 2020-12, pydantic's), for editors."""
    schema = ExperimentSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "giblet-kedro experiment spec"
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


def write_docs(root: Path) -> list[Path]:
    """Write the reference and the JSON Schema under ``root``; returns their paths."""
    written = []
    for relative, text in ((REFERENCE_FILE, render_reference()), (SCHEMA_FILE, json_schema())):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written

"""Find, parse and validate an experiment spec; turn errors into one readable message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from giblet_kedro.errors import SpecError
from giblet_kedro.paths import experiments_dirs
from giblet_kedro.spec.reference import apply_overrides, describe_overrides, parse_reference
from giblet_kedro.spec.schema import ExperimentSpec

SPEC_SUFFIXES = (".yml", ".yaml")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that rejects a key given twice (YAML silently keeps the last)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep=False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise SpecError(
                f"key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                "each key may be given once"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def available_experiments(env: str | None = None) -> list[str]:
    return sorted({p.stem for folder in experiments_dirs(env) if folder.is_dir()
                   for p in folder.iterdir() if p.suffix in SPEC_SUFFIXES})


def find_spec_file(name_or_path: str, env: str | None = None) -> Path:
    """A name under ``conf/<env>/experiments/`` or ``conf/base/experiments/``, or a path
    to a YAML file."""
    text = str(name_or_path).strip()
    looks_like_path = "/" in text or "\\" in text or text.endswith(SPEC_SUFFIXES)
    if looks_like_path:
        path = Path(text).expanduser()
        if path.is_file():
            return path.resolve()
        raise SpecError(
            f"experiment spec file not found: {path} "
            f"(give an existing YAML file, or one of the names {available_experiments(env)})"
        )
    folders = experiments_dirs(env)
    for folder in folders:
        for suffix in SPEC_SUFFIXES:
            candidate = folder / f"{text}{suffix}"
            if candidate.is_file():
                return candidate
    raise SpecError(
        f"unknown experiment {text!r}: no {text}.yml in {' or '.join(str(f) for f in folders)}; "
        f"accepted: one of {available_experiments(env)} or a path to a YAML file"
    )


def _format_location(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("dict[str,str]", "SubjectPattern", "function-after[_not_empty(), dict[str,str]]",
                      "subject-pattern", "subject-files", "str", "list[str]", "dict[constrained-str,str]",
                      "table-feature", "array-feature", "textgrid-feature"):
            continue  # pydantic's union-branch labels are noise for a user
        elif str(item).startswith(("function-", "tagged-union", "union[")):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid experiment spec {source}:"]
    seen: set[str] = set()
    for item in error.errors(include_url=False):
        key = _format_location(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; every accepted key is in docs/spec-reference.md)"
        got = item.get("input")
        line = f"  - {key}: {message}"
        if item["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict):
            line += f" (got {got!r})"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return "\n".join(lines)


def parse_spec(text: str, source: str = "<string>", overrides: dict[str, Any] | None = None) -> ExperimentSpec:
    """Parse YAML text into a validated :class:`ExperimentSpec`, ``overrides`` (nested,
    as Kedro's ``--params``) applied before validation."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except SpecError as exc:
        raise SpecError(f"invalid experiment spec {source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"experiment spec {source} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(
            f"experiment spec {source} must be a YAML mapping with keys such as "
            f"'name', 'fmri', 'stimulus'; got {type(raw).__name__}"
        )
    if overrides:
        source = f"{source} with --params {describe_overrides(overrides)}"
        raw = apply_overrides(raw, overrides, source)
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None


def load_spec(reference: str, env: str | None = None) -> tuple[ExperimentSpec, Path]:
    """Load and validate a spec by name, path or reference (a spec plus ``--params``
    overrides, :mod:`giblet_kedro.spec.reference`). Returns the spec and its file."""
    name_or_path, overrides = parse_reference(reference)
    path = find_spec_file(name_or_path, env)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read experiment spec {path}: {exc}") from None
    return parse_spec(text, source=str(path), overrides=overrides), path

"""The spec reference and JSON Schema under docs/ against the schema they come from."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from giblet_kedro.spec import docs
from giblet_kedro.spec.load import parse_spec
from giblet_kedro.spec.schema import ExperimentSpec
from tests.conftest import REPO


def _schema_key_paths() -> set[str]:
    """Every key path, walked from pydantic's JSON Schema (not from the reference's own
    walk over the models): properties, through $ref, anyOf and mapping values."""
    schema = ExperimentSpec.model_json_schema()
    defs = schema.get("$defs", {})
    paths: set[str] = set()

    def walk(node: dict, prefix: str, seen: frozenset) -> None:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                walk(defs[name], prefix, seen | {name})
            return
        for option in node.get("anyOf", []) + node.get("oneOf", []):
            walk(option, prefix, seen)
        values = [node["additionalProperties"]] if isinstance(node.get("additionalProperties"), dict) else []
        for value in values + list(node.get("patternProperties", {}).values()):  # a mapping's values
            walk(value, f"{prefix}<key>.", seen)
        for key, sub in node.get("properties", {}).items():
            paths.add(prefix + key)
            walk(sub, f"{prefix}{key}.", seen)

    walk(schema, "", frozenset())
    return paths


def test_every_key_of_the_json_schema_is_in_the_reference():
    expected = _schema_key_paths()
    assert len(expected) > 100
    assert set(docs.key_paths()) == expected
    text = (REPO / docs.REFERENCE_FILE).read_text()
    sections: dict[str, str] = {}
    for path, body in re.findall(r"^## `([^`]+)`[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S):
        sections[path] = sections.get(path, "") + body  # one path, several kinds of section
    for path in expected:
        section, _, key = path.rpartition(".")
        body = sections[section or "(top level)"]
        same_as = re.search(r"\(\[(\w+)\]\(#(\w+)\)\)", body.split("\n\n")[0]) if "Same keys" in body else None
        if same_as:  # a model shown once, referred to from its other paths
            continue
        assert f"| `{key}` |" in body, f"{path} missing from {docs.REFERENCE_FILE}"


def test_committed_reference_and_schema_are_up_to_date():
    """`make docs` regenerates them; a schema change without it fails here."""
    assert (REPO / docs.REFERENCE_FILE).read_text() == docs.render_reference(), "run `make docs`"
    assert (REPO / docs.SCHEMA_FILE).read_text() == docs.json_schema(), "run `make docs`"


def test_reference_states_types_defaults_and_accepted_values():
    text = docs.render_reference()
    assert '| `mode` | one of: `"cross_subject"`, `"per_subject"` | `"cross_subject"` |' in text
    assert "| `epochs` | integer (> 0) | `50` |" in text
    assert "| `name` | string (at most 120 characters, matching" in text and "**required**" in text


def test_the_example_spec_is_valid():
    parse_spec(docs.EXAMPLE, "docs example")


@pytest.mark.parametrize("name", ["demo", "demo_runs"])
def test_shipped_specs_point_editors_at_the_schema(name):
    path = REPO / "conf" / "base" / "experiments" / f"{name}.yml"
    first = path.read_text().splitlines()[0]
    target = first.removeprefix("# yaml-language-server: $schema=")
    assert target != first
    assert json.loads((path.parent / target).resolve().read_text())["title"] == "giblet-kedro experiment spec"
    assert yaml.safe_load(path.read_text())["name"] == name


def test_no_documentation_points_outside_the_repo():
    files = [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("src/**/*.py"), *REPO.glob("conf/**/*.yml")]
    for path in files:
        text = path.read_text()
        for needle in ("DESIGN.md", "../shared", "DEVELOPERS.md"):
            assert needle not in text, f"{path} mentions {needle}"
    for path in [REPO / "README.md", *REPO.glob("docs/*.md")]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text()):
            assert not target.startswith(("http:", "https:")), f"{path} links outside the repo: {target}"
            assert (path.parent / target).exists(), f"{path} links to a missing file: {target}"

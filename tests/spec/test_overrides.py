"""``--params`` overrides of spec keys: applied to the spec before validation, so they
reach fingerprints, caches and messages; Kedro's session sees them the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from giblet_kedro.config_loader import GibletConfigLoader
from giblet_kedro.errors import SpecError
from giblet_kedro.spec.compile import compile_experiment
from giblet_kedro.spec.reference import (
    apply_overrides,
    flatten,
    make_reference,
    parse_reference,
    split_runtime_params,
)
from giblet_kedro.spec.resolvers import RESOLVERS
from tests.conftest import REPO

SPEC = REPO / "conf" / "base" / "experiments" / "demo.yml"


def test_reference_round_trips_and_is_resolver_safe():
    overrides = {"train": {"epochs": 50, "lr": 3e-4}, "fmri": {"mode": "per_subject", "split": {"val": 0.2}}}
    reference = make_reference("/x/sherlock.yml", overrides)
    assert not set(reference) & set(",:{}$ ")
    assert parse_reference(reference) == ("/x/sherlock.yml", overrides)
    assert make_reference("demo", {}) == "demo" and parse_reference("demo") == ("demo", {})
    assert flatten(overrides) == {"train.epochs": 50, "train.lr": 3e-4, "fmri.mode": "per_subject",
                                  "fmri.split.val": 0.2}


def test_overrides_merge_key_by_key_and_replace_leaves():
    raw = {"fmri": {"mode": "cross_subject", "split": {"val": 0.1, "test": 0.1}}, "train": {"epochs": 2}}
    merged = apply_overrides(raw, {"fmri": {"split": {"val": 0.2}}, "train": {"epochs": 7}}, "s.yml")
    assert merged == {"fmri": {"mode": "cross_subject", "split": {"val": 0.2, "test": 0.1}}, "train": {"epochs": 7}}
    assert raw["train"]["epochs"] == 2  # the original is kept
    with pytest.raises(SpecError, match=r"fmri\.mode is 'cross_subject' in the spec, not a section"):
        apply_overrides(raw, {"fmri": {"mode": {"x": 1}}}, "s.yml")


def test_project_runtime_params_are_not_spec_keys():
    project, overrides = split_runtime_params({"experiment": "demo", "recompute": True, "train": {"epochs": 3}})
    assert project == {"experiment": "demo", "recompute": True}
    assert overrides == {"train": {"epochs": 3}}


def test_an_override_changes_exactly_the_fingerprints_that_read_it():
    base = compile_experiment(str(SPEC), check_files=False)
    epochs = compile_experiment(make_reference(str(SPEC), {"train": {"epochs": 3}}), check_files=False)
    mode = compile_experiment(make_reference(str(SPEC), {"fmri": {"mode": "per_subject"}}), check_files=False)
    assert epochs.spec.train.epochs == 3 and mode.spec.fmri.mode == "per_subject"
    changed = {stage for stage, fp in epochs.fingerprints.items() if base.fingerprints[stage] != fp}
    assert "train" in changed and not changed & {"demo", "fmri_stats", "fmri_tensor", "video"}
    changed = {stage for stage, fp in mode.fingerprints.items() if base.fingerprints[stage] != fp}
    assert {"fmri_tensor", "train"} <= changed and "fmri_stats" not in changed
    assert epochs.describe()["overrides"] == {"train.epochs": 3}
    assert parse_reference(epochs.reference) == (str(SPEC), {"train": {"epochs": 3}})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"fmri": {"modee": "x"}}, "fmri.modee: unknown key"),
    ({"fmri": {"mode": "per_subjects"}}, "fmri.mode: Input should be 'cross_subject' or 'per_subject'"),
    ({"trian": {"epochs": 3}}, "trian: unknown key"),
    ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than 0"),
])
def test_a_bad_override_is_the_usual_one_line_spec_error(overrides, message):
    with pytest.raises(SpecError) as caught:
        compile_experiment(make_reference(str(SPEC), overrides), check_files=False)
    text = str(caught.value)
    assert message in text and "with --params" in text and str(SPEC) in text


def test_config_loader_takes_spec_keys_out_of_kedro_parameters(tmp_path, monkeypatch):
    """Kedro would merge runtime params into parameters.yml, replacing the compiled
    `train` section with {'epochs': 3}; the loader applies them to the spec instead."""
    monkeypatch.setenv("GIBLET_PROJECT_ROOT", str(REPO))
    loader = GibletConfigLoader(str(REPO / "conf"), env="local", base_env="base", default_run_env="local",
                                runtime_params={"experiment": "demo", "train": {"epochs": 3}},
                                custom_resolvers=RESOLVERS)
    params = loader["parameters"]
    assert params["train"]["epochs"] == 3
    assert params["train"]["batch_size"] == 2  # the rest of the spec's train section is kept
    assert params["experiment_info"]["overrides"] == {"train.epochs": 3}
    plain = GibletConfigLoader(str(REPO / "conf"), env="local", base_env="base", default_run_env="local",
                               runtime_params={"experiment": "demo"})["parameters"]
    assert plain["experiment_info"]["fingerprints"]["train"] != params["experiment_info"]["fingerprints"]["train"]
    assert plain["experiment_info"]["fingerprints"]["fmri_stats"] == params["experiment_info"]["fingerprints"][
        "fmri_stats"]


def test_env_experiments_folder_is_searched_first(tmp_path, monkeypatch):
    from giblet_kedro.spec.load import find_spec_file

    root = tmp_path / "project"
    (root / "conf" / "base" / "experiments").mkdir(parents=True)
    (root / "conf" / "staging" / "experiments").mkdir(parents=True)
    for env in ("base", "staging"):
        (root / "conf" / env / "experiments" / "x.yml").write_text("name: x\n")
    monkeypatch.setenv("GIBLET_PROJECT_ROOT", str(root))
    assert find_spec_file("x", "staging") == root / "conf" / "staging" / "experiments" / "x.yml"
    assert find_spec_file("x") == root / "conf" / "base" / "experiments" / "x.yml"  # no conf/local/experiments
    assert Path(find_spec_file("x", "local")).parent.parent.name == "base"


def test_the_env_globals_choose_the_default_experiment(tmp_path, monkeypatch):
    """`kedro run --env staging` with conf/staging/globals.yml naming another default:
    Kedro's parameters and the project's CLI both take it (not conf/base's)."""
    import shutil

    from giblet_kedro.cli import default_experiment

    root = tmp_path / "project"
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    shutil.copy(REPO / "pyproject.toml", root)
    (root / "conf" / "staging").mkdir()
    (root / "conf" / "local").mkdir()
    (root / "conf" / "staging" / "globals.yml").write_text("default_experiment: demo_runs\n")
    monkeypatch.setenv("GIBLET_PROJECT_ROOT", str(root))
    assert default_experiment("staging") == "demo_runs" and default_experiment() == "demo"
    loader = GibletConfigLoader(str(root / "conf"), env="staging", base_env="base", default_run_env="local",
                                runtime_params={}, custom_resolvers=RESOLVERS)
    assert loader["parameters"]["experiment_name"].endswith("conf/base/experiments/demo_runs.yml")

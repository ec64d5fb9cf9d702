"""The spec schema: valid specs load; every mistake names the file, the key and what is accepted."""

from __future__ import annotations

import textwrap

import pytest

from giblet_kedro.errors import SpecError
from giblet_kedro.spec.load import find_spec_file, load_spec, parse_spec
from giblet_kedro.spec.schema import ExperimentSpec, SubjectPattern

MINIMAL = """
name: t
fmri:
  subjects: {"01": raw/sub-01.nii.gz, "02": raw/sub-02.nii.gz}
  tr: 1.5
"""


def spec_error(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(text), source="exp.yml")
    return str(info.value)


def test_default_experiment_is_valid_and_complete():
    spec, path = load_spec("demo")
    assert path.name == "demo.yml"
    assert spec.fmri.mode == "cross_subject"
    # every section of the contract is present and typed
    assert spec.stimulus.audio.bandwidth == 3.0 and spec.train.epochs >= 1 and spec.verify.min_loss_drop > 0


def test_minimal_spec_gets_documented_defaults():
    spec = parse_spec(MINIMAL)
    assert spec.fmri.mask == "auto" and spec.fmri.zscore.ddof == 1
    assert spec.fmri.split.val == 0.1 and spec.fmri.split.test == 0.1
    assert spec.loss.normalize == "variance" and spec.model.bottleneck == 2048


def test_the_labs_full_contract_example_is_accepted():
    text = """
    name: sherlock_5sub
    seed: 0
    fmri:
      subjects: {"01": raw/sub-01_bold.nii.gz, "02": raw/sub-02_bold.nii.gz}
      mask: auto
      tr: 1.5
      trs: [0, 946]
      zscore: {ddof: 1}
      mode: cross_subject
      split: {val: 0.1, test: 0.1}
      heldout: {"01": raw/sub-01_recall.nii.gz}
    stimulus:
      video: {path: raw/movie.mp4, size: [160, 90], frames_per_tr: 3}
      audio: {path: raw/movie.mp4, model: encodec_24khz, bandwidth: 3.0, weights: null}
      text: {annotations: raw/segments.xlsx, start: "Start Time (s)", end: "End Time (s)", columns: ["Scene Details - A Level"], model: ViT-B-32, weights: null}
      hrf: {kind: glover, delay_s: 0}
    model: {bottleneck: 2048, hidden: 1024, dropout: 0.3}
    loss: {normalize: variance, weights: {video: 1, audio: 1, text: 1, fmri: 1}}
    train: {epochs: 50, batch_size: 2, lr: 1.0e-3, weight_decay: 1.0e-5, warmup_epochs: 10,
            grad_clip: 1.0, precision: bf16, devices: auto, backend: auto, checkpoint_every: 10}
    verify: {min_loss_drop: 0.05, drop_within_epochs: 3}
    """
    spec = parse_spec(textwrap.dedent(text))
    assert spec.fmri.trs == (0, 946) and spec.model.bottleneck == 2048


def test_subject_pattern_expands_ids():
    spec = parse_spec(MINIMAL.replace(
        'subjects: {"01": raw/sub-01.nii.gz, "02": raw/sub-02.nii.gz}',
        'subjects: {pattern: "raw/sub-{id}_bold.nii.gz", ids: ["01", "05"]}'))
    assert isinstance(spec.fmri.subjects, SubjectPattern)
    assert spec.fmri.subject_files() == {"01": "raw/sub-01_bold.nii.gz", "05": "raw/sub-05_bold.nii.gz"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("tr: 1.5", "tr: 1.5\n  modee: per_subject"), ["exp.yml", "fmri.modee", "unknown key"]),
        (("tr: 1.5", "tr: 1.5\n  mode: per_subjects"), ["fmri.mode", "'cross_subject' or 'per_subject'", "per_subjects"]),
        (("tr: 1.5", "tr: fast"), ["fmri.tr", "valid number", "fast"]),
        (("tr: 1.5", "tr: -2"), ["fmri.tr", "greater than 0"]),
        (("tr: 1.5", "tr: 1.5\n  trs: [900, 10]"), ["fmri.trs", "stop > start"]),
        (("tr: 1.5", "tr: 1.5\n  split: {val: 0.5, test: 0.45}"), ["fmri.split", "val + test"]),
        (("tr: 1.5", "tr: 1.5\n  zscore: {ddof: 2}"), ["fmri.zscore.ddof", "0 or 1"]),
        (("tr: 1.5", 'tr: 1.5\n  heldout: {"07": raw/x.nii.gz}'), ["heldout", "'07'", "not in fmri.subjects"]),
        (("name: t", "name: t\ntrain: {epochs: 2, warmup_epochs: 5}"), ["train", "warmup_epochs"]),
        (("name: t", "name: t\nloss: {weights: {vidoe: 1}}"), ["loss.weights.vidoe", "video"]),
        (("name: t", "name: t\nstimulus: {audio: {path: m.mp4, bandwidth: 5}}"), ["stimulus.audio.bandwidth", "1.5"]),
    ],
)
def test_mistakes_name_file_key_and_accepted_values(change, expected):
    message = spec_error(MINIMAL.replace(*change))
    for fragment in expected:
        assert fragment in message, message


def test_empty_subject_list_is_an_error():
    assert "empty" in spec_error(MINIMAL.replace(
        'subjects: {"01": raw/sub-01.nii.gz, "02": raw/sub-02.nii.gz}', "subjects: {}"))


def test_missing_required_sections_are_named():
    message = spec_error("name: t\n")
    assert "fmri" in message and "Field required" in message


def test_duplicate_keys_are_rejected_not_silently_overwritten():
    message = spec_error(MINIMAL + "name: other\n")
    assert "'name' appears twice" in message and "exp.yml" in message


def test_non_mapping_and_bad_yaml_are_errors():
    assert "mapping" in spec_error("- just\n- a list\n")
    assert "not valid YAML" in spec_error("name: [unclosed\n")


def test_yaml_tags_cannot_execute_code():
    assert "not valid YAML" in spec_error("name: !!python/object/apply:os.system ['true']\n")


def test_demo_placeholder_needs_a_demo_section():
    message = spec_error(MINIMAL.replace("raw/sub-01.nii.gz", "'{demo}/sub-01.nii.gz'"))
    assert "{demo}" in message and "demo" in message


def test_unknown_experiment_lists_available_names():
    with pytest.raises(SpecError) as info:
        find_spec_file("no_such_experiment")
    assert "no_such_experiment" in str(info.value) and "demo" in str(info.value)


def test_missing_spec_path_is_named(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        find_spec_file(str(tmp_path / "nope.yml"))


def test_models_forbid_extra_keys_everywhere():
    def walk(model):
        yield model
        for field in model.model_fields.values():
            for candidate in getattr(field.annotation, "__args__", (field.annotation,)):
                if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                    yield from walk(candidate)

    models = {model.__name__: model for model in walk(ExperimentSpec)}
    assert {"FmriSpec", "SubjectPattern", "AudioSpec", "TextSpec", "TrainSpec", "VerifySpec"} <= set(models)
    for name, model in models.items():
        assert model.model_config.get("extra") == "forbid", name

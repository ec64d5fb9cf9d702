"""The spec schema: valid specs load; every mistake names the file, the key and what is accepted."""

from __future__ import annotations

import textwrap
import typing

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
    assert spec.stimulus.audio.bandwidth == 1.5 and spec.train.epochs >= 1 and spec.verify.min_loss_drop > 0


def test_minimal_spec_gets_documented_defaults():
    spec = parse_spec(MINIMAL)
    assert spec.fmri.mask == "auto" and spec.fmri.zscore.ddof == 1
    assert spec.fmri.split.val == 0.1 and spec.fmri.split.test == 0.1
    assert spec.loss.normalize == "variance" and spec.model.bottleneck == "voxels" and spec.model.rank is None
    assert spec.fmri.split.gap_trs == "auto"
    assert spec.stimulus is None
    with_movie = parse_spec(MINIMAL + "stimulus:\n  video: {path: raw/movie.mp4}\n")
    hrf = with_movie.stimulus.hrf  # the stimulus section without an hrf key
    assert (hrf.kind, hrf.delay_s, hrf.slice_time_ref) == ("glover", 0.0, 0.5)
    assert spec.lesion is None and spec.evaluate.null == "phase" and spec.evaluate.null_draws == 1000


def test_a_default_never_makes_a_valid_spec_invalid():
    """``epochs: 2`` alone used to fail: the default warmup (10 epochs) exceeded it."""
    spec = parse_spec(MINIMAL + "train: {epochs: 2}\n")
    assert spec.train.warmup_epochs is None and spec.train.warmup == 2
    with pytest.raises(SpecError, match="warmup_epochs"):
        parse_spec(MINIMAL + "train: {epochs: 2, warmup_epochs: 5}\n")


def test_a_model_lesion_needs_the_voxel_layer():
    lesion = "lesion: {regions: {v1: {mask: m.nii.gz}}, source: model}\n"
    with pytest.raises(SpecError, match="lesion.source: model silences the model's voxel layer"):
        parse_spec(MINIMAL + "model: {bottleneck: 512}\n" + lesion)
    assert parse_spec(MINIMAL + "model: {bottleneck: 512}\n" + lesion.replace("model}", "auto}")).lesion.source == "auto"


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
    assert spec.fmri.subject_files() == {"01": {"1": "raw/sub-01_bold.nii.gz"}, "05": {"1": "raw/sub-05_bold.nii.gz"}}


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
        (("name: t", "name: t\nlesion: {regions: {v1: {atlas: a.nii.gz}}}"), ["lesion.regions.v1", "needs 'labels'"]),
        (("name: t", "name: t\nlesion: {regions: {v1: {mask: m.nii.gz, atlas: a.nii.gz, labels: [1]}}}"),
         ["lesion.regions.v1", "exactly one of 'mask'"]),
        (("name: t", "name: t\nlesion: {regions: {}}"), ["lesion.regions", "at least 1"]),
        (("name: t", "name: t\nlesion: {regions: {v1: {mask: m.nii.gz}}, method: silence}"),
         ["lesion.method", "'zero', 'mean' or 'noise'"]),
        (("name: t", "name: t\nevaluate: {ridge: {delay_sets: [[]]}}"), ["evaluate.ridge.delay_sets", "[[0], [0, 1, 2]]"]),
        (("name: t", "name: t\nevaluate: {fdr: 1.5}"), ["evaluate.fdr", "less than 1"]),
        (("name: t", "name: t\ntrain: {seeds: [0, 3, 0]}"), ["train.seeds", "unique", "['0']"]),
        (("name: t", "name: t\ntrain: {seeds: []}"), ["train.seeds", "at least 1"]),
        (("name: t", "name: t\nmodel: {temporal: transformer, lag_basis: 4}"), ["model.lag_basis", "temporal: lags"]),
        (("name: t", "name: t\nmodel: {temporal: transformer, code_rank: 10}"), ["divide by 4", "e.g. 12"]),
        (("name: t", "name: t\nmodel: {temporal: transformer, bottleneck: 64, code_rank: 6}"),
         ["(6: model.code_rank)", "e.g. 8"]),
        (("name: t", "name: t\nmodel: {head_rank: 4}"), ["model.head_rank (4)", "mode: per_subject"]),
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
    def types_in(annotation):
        yield annotation
        for arg in typing.get_args(annotation):  # unions, Annotated, dict/list parameters
            yield from types_in(arg)

    def walk(model):
        yield model
        for field in model.model_fields.values():
            for candidate in types_in(field.annotation):
                if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                    yield from walk(candidate)

    models = {model.__name__: model for model in walk(ExperimentSpec)}
    assert {"FmriSpec", "SubjectPattern", "RunSpec", "CleanSpec", "ConfoundSpec", "BidsSpec", "AudioSpec",
            "TextSpec", "TrainSpec", "VerifySpec"} <= set(models)
    for name, model in models.items():
        assert model.model_config.get("extra") == "forbid", name


# ------------------------------------------------------------------ several runs
RUNS = """
name: t
fmri:
  subjects:
    pattern: "raw/sub-{id}_run-{run}_bold.nii.gz"
    ids: ["01", "02"]
    runs: ["1", "2"]
  tr: 1.5
"""


def test_runs_as_pattern_list_or_mapping_are_the_same_runs():
    by_pattern = parse_spec(RUNS).fmri
    by_list = parse_spec(RUNS.replace(
        '''  subjects:
    pattern: "raw/sub-{id}_run-{run}_bold.nii.gz"
    ids: ["01", "02"]
    runs: ["1", "2"]''',
        '''  subjects: {"01": [raw/sub-01_run-1_bold.nii.gz, raw/sub-01_run-2_bold.nii.gz],
             "02": {"1": raw/sub-02_run-1_bold.nii.gz, "2": raw/sub-02_run-2_bold.nii.gz}}''')).fmri
    assert by_pattern.subject_files() == by_list.subject_files()
    assert by_pattern.run_ids == ["1", "2"]
    assert by_pattern.run_files["02/2"] == "raw/sub-02_run-2_bold.nii.gz"


@pytest.mark.parametrize(("change", "expected"), [
    (("runs: [\"1\", \"2\"]", "runs: [\"1\", \"1\"]"), "run ids must be unique"),
    (("_run-{run}", ""), "must contain '{run}'"),
    (("    runs: [\"1\", \"2\"]\n", ""), "list the run ids in 'runs'"),
    (("  tr: 1.5\n", "  tr: 1.5\n  runs: {\"3\": {onset_s: 0}}\n"), "fmri.runs names runs ['3'] that no subject has"),
    (("  tr: 1.5\n", "  tr: 1.5\n  split: {by: run, val: [], test: [\"3\"]}\n"), "fmri.split names runs ['3']"),
    (("  tr: 1.5\n", "  tr: 1.5\n  split: {by: run, val: [\"1\"], test: [\"2\"]}\n"), "leaves no run for training"),
    (("  tr: 1.5\n", "  tr: 1.5\n  split: {by: run, val: [\"2\"], test: [\"2\"]}\n"), "in both val and test"),
    (("  tr: 1.5\n", "  tr: 1.5\n  split: {by: run, test: 0.1}\n"), "test lists run ids"),
    (("  tr: 1.5\n", "  tr: 1.5\n  split: {by: run, val: 0.95, test: [\"2\"]}\n"), "val = 0.95 leaves less"),
    (("  tr: 1.5\n", "  tr: 1.5\n  split: {test: [\"2\"]}\n"), "with by: blocks, val and test are fractions"),
    (("  tr: 1.5\n", "  tr: 1.5\nstimulus: {video: {path: m.mp4}}\n"), "give fmri.runs[run].onset_s"),
    (("  tr: 1.5\n", "  tr: 1.5\n  runs: {\"1\": {onset_s: 0}, \"2\": {onset_s: 60}}\n"
                     "stimulus: {video: {path: m.mp4}, onset_s: 4}\n"), "the movie onset is given twice"),
    (("  tr: 1.5\n", "  tr: 1.5\n  clean: {high_pass_hz: 0.1, low_pass_hz: 0.05}\n"), "must be below low_pass_hz"),
    (("  tr: 1.5\n", "  tr: 1.5\n  clean: {filter: cosine, high_pass_hz: 0.01, low_pass_hz: 0.1}\n"),
     "cosine is a high-pass filter only"),
    (("  tr: 1.5\n", "  tr: 1.5\n  clean: {confounds: {columns: [a]}}\n"), "needs 'files' or 'pattern'"),
    (("  tr: 1.5\n", "  tr: 1.5\n  clean: {confounds: {pattern: 'raw/rp_{id}.txt'}}\n"), "must contain '{run}'"),
    (("  tr: 1.5\n", "  tr: 1.5\n  clean: {confounds: {files: {\"01\": a.txt}}}\n"),
     "one table per subject and run"),
    (("  tr: 1.5\n", "  tr: 1.5\n  heldout: {\"01\": r.nii.gz}\n  clean: {confounds: {pattern: 'rp_{id}_{run}.txt'}}\n"),
     "held-out runs of subjects ['01'] need tables too"),
    (("  tr: 1.5\n", "  bids: {root: b, task: movie}\n"), "either as 'subjects'"),
    (("  tr: 1.5\n", ""), "fmri.tr is required"),
])
def test_run_and_cleaning_mistakes_are_explained(change, expected):
    assert expected in spec_error(RUNS.replace(*change))


def test_onsets_with_several_runs():
    spec = parse_spec(RUNS + '  runs: {"1": {onset_s: 0}, "2": {onset_s: 1419}}\nstimulus: {video: {path: m.mp4}}\n')
    assert spec.run_onsets() == {"1": 0.0, "2": 1419.0}
    single = parse_spec(MINIMAL + "stimulus: {video: {path: m.mp4}, onset_s: 3.5}\n")
    assert single.run_onsets() == {"1": 3.5}


def test_every_input_file_is_listed_with_its_key():
    spec = parse_spec(RUNS + "  clean: {confounds: {pattern: 'raw/rp_{id}_{run}.txt', skip_rows: 10}}\n")
    files = spec.input_files()
    assert files["fmri.subjects['01']['2']"] == "raw/sub-01_run-2_bold.nii.gz"
    assert files["fmri.clean.confounds.files['02']['1']"] == "raw/rp_02_1.txt"


def test_keys_a_layout_reads_are_accepted_with_it():
    """The counterparts of the refusals above: each key with the layout that reads it, and
    the transformer with every default, are valid."""
    assert parse_spec(MINIMAL + "model: {temporal: transformer}\n").model.lag_basis is None  # 6 for lags
    assert parse_spec(MINIMAL + "model: {temporal: transformer, bottleneck: 30, code_rank: 32}\n").model.code_rank == 32
    assert parse_spec(MINIMAL + "model: {temporal: lags, lag_basis: 4, code_rank: 8}\n").model.code_rank == 8
    assert parse_spec(MINIMAL + "model: {temporal: transformer, bottleneck: 512}\n").model.bottleneck == 512
    assert parse_spec(MINIMAL + "model: {bottleneck: 512, code_rank: 8}\n").model.code_rank == 8
    per_subject = MINIMAL.replace("tr: 1.5", "tr: 1.5\n  mode: per_subject", 1)
    assert parse_spec(per_subject + "model: {head_rank: 4}\n").model.head_rank == 4


@pytest.mark.parametrize("model", ["{temporal: transformer}", "{temporal: lags, lag_basis: 4}",
                                   "{temporal: transformer, bottleneck: 64, code_rank: 8}"])
def test_a_validated_spec_validates_again_from_its_own_dump(model):
    """Kedro validates the typed node parameters again from the compiled (dumped) spec,
    and a BIDS spec is expanded through a dump: a default filled in by the first
    validation must never be refused by the second."""
    from giblet_kedro.spec.schema import ExperimentSpec, TrainingSettings

    spec = parse_spec(MINIMAL + f"model: {model}\n")
    again = ExperimentSpec.model_validate(spec.model_dump(mode="json"))
    assert again.model == spec.model
    TrainingSettings.model_validate({"model": spec.model.model_dump(mode="json"),
                                     "loss": spec.loss.model_dump(mode="json"),
                                     "train": spec.train.model_dump(mode="json"), "seed": 0, "experiment": "t",
                                     "run_dir": "run"})


def test_a_window_must_hold_a_target_after_its_context():
    """21 s of context at TR 1.5 s is 14 TRs (13 before each target): a window of 13 TRs
    holds no target and is refused with what would be accepted; 14 is the smallest window;
    a spec that leaves the window out gets the default, whatever its context."""
    message = spec_error(MINIMAL + "model: {context_s: 21}\ntrain: {window_trs: 13}\n")
    assert "train.window_trs (13)" in message and "window_trs >= 14" in message
    assert parse_spec(MINIMAL + "model: {context_s: 21}\ntrain: {window_trs: 14}\n").train.window_trs == 14
    assert parse_spec(MINIMAL + "model: {context_s: 120}\n").train.window_trs is None

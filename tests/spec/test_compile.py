"""Fingerprints: what changes a stage's fingerprint, and what must not."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

from giblet_kedro.errors import InputDataError
from giblet_kedro.spec import fingerprint
from giblet_kedro.spec.compile import STAGES, compile_spec, resolve_path
from giblet_kedro.spec.load import parse_spec
from tests.conftest import random_runs, write_run


@pytest.fixture
def project(tmp_path, monkeypatch, rng):
    """A project folder with two subjects' runs under data/01_raw/."""
    monkeypatch.setenv("GIBLET_PROJECT_ROOT", str(tmp_path))
    for sid, data in zip(("01", "02"), random_runs(rng, 2)):
        write_run(tmp_path / "data" / "01_raw" / f"sub-{sid}.nii.gz", data)
    return tmp_path


def compile_text(project, extra: str = "", **overrides) -> dict[str, str]:
    """Fingerprints of a two-subject spec; ``extra`` is YAML appended at the top level."""
    fields = {"mode": "cross_subject", "ddof": 1, "val": 0.1}
    fields.update(overrides)
    text = textwrap.dedent(f"""
        name: t
        fmri:
          subjects: {{"01": sub-01.nii.gz, "02": sub-02.nii.gz}}
          tr: 1.5
          mode: {fields['mode']}
          zscore: {{ddof: {fields['ddof']}}}
          split: {{val: {fields['val']}, test: 0.1}}
        model: {{hidden: {fields.get('hidden', 1024)}}}
    """) + textwrap.dedent(extra)
    return compile_spec(parse_spec(text), project / "t.yml").fingerprints


def test_relative_paths_resolve_against_raw_folder(project):
    assert resolve_path("sub-01.nii.gz", None) == (project / "data" / "01_raw" / "sub-01.nii.gz").resolve()
    assert resolve_path("/abs/x.nii.gz", None).as_posix() == "/abs/x.nii.gz"


def test_same_spec_same_fingerprints(project):
    assert compile_text(project) == compile_text(project)


def test_mode_changes_the_tensor_but_not_the_per_subject_stats(project):
    base, other = compile_text(project), compile_text(project, mode="per_subject")
    assert other["fmri_stats"] == base["fmri_stats"]
    assert other["fmri_tensor"] != base["fmri_tensor"]


def test_ddof_and_split_change_stats_and_everything_downstream(project):
    base = compile_text(project)
    for change in ({"ddof": 0}, {"val": 0.2}):
        other = compile_text(project, **change)
        assert all(other[stage] != base[stage] for stage in ("fmri_stats", "fmri_tensor", "fmri_heldout"))


def test_model_fields_move_training_but_no_data_stage(project):
    base, other = compile_text(project, hidden=64), compile_text(project)
    assert {stage for stage in base if base[stage] != other[stage]} == {"train", "verify", "evaluate", "lesion",
                                                                        "report", "predict"}


def test_evaluation_and_lesion_settings_move_only_their_stages(project, rng):
    write_run(project / "data" / "01_raw" / "atlas.nii.gz", rng.integers(0, 3, (5, 4, 3, 1)).astype(np.float32))
    lesion = "lesion: {regions: {v: {atlas: atlas.nii.gz, labels: [1]}}}\n"
    base = compile_text(project, extra=lesion)

    def moved(other: dict[str, str]) -> set[str]:
        return {stage for stage in base if base[stage] != other[stage]}

    # the prediction's held-out scores use the evaluation's null; its regions default to the lesion's
    assert moved(compile_text(project, extra=lesion + "evaluate: {null_draws: 50}\n")) == {"evaluate", "report",
                                                                                           "predict"}
    assert moved(compile_text(project, extra=lesion.replace("[1]", "[2]"))) == {"lesion", "report", "predict"}
    own_regions = "predict: {regions: {w: {atlas: atlas.nii.gz, labels: [2]}}}\n"
    assert moved(compile_text(project, extra=lesion + own_regions)) == {"predict"}
    assert moved(compile_text(project, extra=lesion + "predict: {ablate: [video]}\n")) == {"predict"}
    write_run(project / "data" / "01_raw" / "atlas.nii.gz", rng.integers(0, 3, (5, 4, 3, 1)).astype(np.float32))
    assert moved(compile_text(project, extra=lesion)) == {"lesion", "report", "predict"}  # new atlas content


def test_replaced_raw_content_changes_fingerprint_touch_does_not(project, rng):
    base = compile_text(project)
    path = project / "data" / "01_raw" / "sub-02.nii.gz"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, new mtime
    assert compile_text(project) == base
    write_run(path, random_runs(rng, 1)[0])
    assert compile_text(project)["fmri_stats"] != base["fmri_stats"]


def test_unchanged_file_is_not_hashed_again(project, monkeypatch):
    compile_text(project)
    calls = []
    real = fingerprint.hashlib.file_digest
    monkeypatch.setattr(fingerprint.hashlib, "file_digest", lambda *a, **k: calls.append(1) or real(*a, **k))
    compile_text(project)
    assert calls == []


def test_missing_input_file_names_the_subject(project):
    (project / "data" / "01_raw" / "sub-02.nii.gz").unlink()
    with pytest.raises(InputDataError, match=r"fmri.subjects\['02'\].*not found"):
        compile_text(project)


def test_code_hash_ignores_docstrings_and_comments_but_not_code():
    base = fingerprint.source_hash('def f(x):\n    """Doc."""\n    return x + 1\n')
    assert fingerprint.source_hash('def f(x):\n    """Other doc."""\n    # a comment\n    return x + 1\n') == base
    assert fingerprint.source_hash('def f(x):\n    return x + 2\n') != base


def runtime_imports(module: str) -> set[str]:
    """The project modules a fresh interpreter holds after importing ``module``: the
    import graph as Python itself walks it (package ``__init__``s left out)."""
    import subprocess
    import sys

    code = (f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('giblet_kedro.') "
            "and getattr(sys.modules[m], '__file__', '') and not sys.modules[m].__file__.endswith('__init__.py')))")
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


@pytest.mark.parametrize("module", sorted({m for stage in STAGES.values() for m, _ in stage.functions}))
def test_the_stages_of_a_node_module_fingerprint_every_module_it_imports(module):
    """Stage code is derived from the import graph: everything Python loads with a node
    module belongs to the stages whose nodes live there (the lesion stage once missed the
    evaluate nodes it imported). Pipeline wiring modules are not code that computes."""
    stages = [stage for stage in STAGES.values() if any(m == module for m, _ in stage.functions)]
    covered = set().union(*(stage.code_modules for stage in stages))
    missing = {m for m in runtime_imports(module) - covered if not m.endswith(".pipeline")}
    assert not missing, missing


def test_stage_code_follows_functions_and_tracks_library_versions():
    from importlib.metadata import version

    lesion, libraries = fingerprint.stage_code(STAGES["lesion"].functions)
    assert {"giblet_kedro.evaluation.lesion_study", "giblet_kedro.evaluation.model", "giblet_kedro.training.job",
            "giblet_kedro.models.autoencoder", "giblet_kedro.stimulus.audio"} <= lesion  # the last one lazily
    assert libraries["torch"] == version("torch")
    assert fingerprint.stage_code(STAGES["evaluate"].functions)[1]["himalaya"] == version("himalaya")
    assert "nilearn" in fingerprint.stage_code(STAGES["fmri_stats"].functions)[1]  # cleaning imports it lazily
    assert fingerprint.stage_code(STAGES["audio_codes_tr"].functions)[1]["encodec"] == version("encodec")
    assert "open_clip" in fingerprint.stage_code(STAGES["text_embeddings_tr"].functions)[1]
    # the stimulus nodes share one module; each extraction stage follows its own node function
    video = STAGES["video_frames_tr"].code_modules
    assert "giblet_kedro.stimulus.video" in video and "giblet_kedro.stimulus.audio" not in video
    assert "giblet_kedro.stimulus.hrf" not in video and "giblet_kedro.stimulus.hrf" in STAGES["video_features"].code_modules


def test_hash_payload_is_order_independent():
    assert fingerprint.hash_payload({"a": 1, "b": [1, 2]}) == fingerprint.hash_payload({"b": [1, 2], "a": 1})
    assert fingerprint.hash_payload({"a": 1}) != fingerprint.hash_payload({"a": np.float64(1.0000001)})


def stimulus_fps(project, **changes) -> dict[str, str]:
    raw = project / "data" / "01_raw"
    if not (raw / "movie.mp4").exists():
        (raw / "movie.mp4").write_bytes(b"movie bytes")
        (raw / "seg.csv").write_text("s,e,t\n0,1,a\n")
    fields = {"mode": "cross_subject", "bandwidth": 3.0, "hrf": "glover", "size": "[160, 90]", "columns": '["t"]'}
    fields.update(changes)
    stimulus = f"""
        stimulus:
          video: {{path: movie.mp4, size: {fields['size']}}}
          audio: {{path: movie.mp4, bandwidth: {fields['bandwidth']}, weights: random}}
          text: {{annotations: seg.csv, start: s, end: e, columns: {fields['columns']}, weights: random}}
          hrf: {{kind: {fields['hrf']}}}
    """
    return compile_text(project, extra=stimulus, mode=fields["mode"])


STIMULUS_STAGES = ("video_frames_tr", "audio_codes_tr", "text_embeddings_tr",
                   "video_features", "audio_codes", "text_embeddings")


def changed(a: dict, b: dict) -> set[str]:
    return {stage for stage in STIMULUS_STAGES if a[stage] != b[stage]}


def test_bandwidth_recomputes_audio_only(project):
    assert changed(stimulus_fps(project), stimulus_fps(project, bandwidth=6.0)) == {"audio_codes_tr", "audio_codes"}


def test_fmri_mode_recomputes_no_stimulus_cache(project):
    assert changed(stimulus_fps(project), stimulus_fps(project, mode="per_subject")) == set()


def test_hrf_recomputes_the_hrf_step_not_the_extraction(project):
    assert changed(stimulus_fps(project), stimulus_fps(project, hrf="spm")) == {
        "video_features", "audio_codes", "text_embeddings"}


def test_each_modality_has_its_own_fingerprint(project):
    assert changed(stimulus_fps(project), stimulus_fps(project, size="[80, 45]")) == {"video_frames_tr", "video_features"}
    assert changed(stimulus_fps(project), stimulus_fps(project, columns='["t", "u"]')) == {
        "text_embeddings_tr", "text_embeddings"}


def test_replaced_movie_recomputes_video_and_audio_not_text(project):
    base = stimulus_fps(project)
    movie = project / "data" / "01_raw" / "movie.mp4"
    stat = movie.stat()
    movie.write_bytes(b"another cut")
    os.utime(movie, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fingerprint_after = stimulus_fps(project)
    assert changed(base, fingerprint_after) == {"video_frames_tr", "video_features", "audio_codes_tr", "audio_codes"}


def test_resolver_memo_notices_a_replaced_stimulus_file(project):
    """The in-process memo must re-check every input, stimulus files included."""
    from giblet_kedro.spec import resolvers

    raw = project / "data" / "01_raw"
    (raw / "movie.mp4").write_bytes(b"first cut")
    spec_file = project / "exp.yml"
    spec_file.write_text('name: t\nfmri:\n  subjects: {"01": sub-01.nii.gz}\n  tr: 1.5\n'
                         'stimulus:\n  video: {path: movie.mp4}\n  audio: {path: movie.mp4, weights: random}\n')
    before = dict(resolvers.compiled(str(spec_file)).fingerprints)
    movie = raw / "movie.mp4"
    stat = movie.stat()
    movie.write_bytes(b"second cut, longer")
    os.utime(movie, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = resolvers.compiled(str(spec_file)).fingerprints
    assert changed(before, after) == {"video_frames_tr", "video_features", "audio_codes_tr", "audio_codes"}
    assert after["fmri_stats"] == before["fmri_stats"]


def test_cleaning_settings_and_tables_are_part_of_the_fmri_fingerprint(project, rng):
    raw = project / "data" / "01_raw"
    for sid in ("01", "02"):
        np.savetxt(raw / f"rp_{sid}.txt", rng.standard_normal((40, 6)))

    def cleaned(settings: str) -> dict[str, str]:
        text = ('name: t\nfmri:\n  subjects: {"01": sub-01.nii.gz, "02": sub-02.nii.gz}\n  tr: 1.5\n'
                f"  clean: {settings}\n")
        return compile_spec(parse_spec(text), project / "t.yml").fingerprints

    base = compile_text(project)
    detrend = cleaned("{detrend: true}")
    motion = cleaned("{detrend: true, confounds: {pattern: 'rp_{id}.txt'}}")
    assert len({base["fmri_stats"], detrend["fmri_stats"], motion["fmri_stats"]}) == 3
    assert motion["fmri_tensor"] != detrend["fmri_tensor"] and motion["fmri_heldout"] != detrend["fmri_heldout"]
    assert motion["video_frames_tr"] == base["video_frames_tr"]  # cleaning never touches the stimulus

    np.savetxt(raw / "rp_02.txt", rng.standard_normal((40, 6)))  # a replaced confound table
    assert cleaned("{detrend: true, confounds: {pattern: 'rp_{id}.txt'}}")["fmri_stats"] != motion["fmri_stats"]


def test_module_code_hash_is_taken_once_per_version_of_the_file(tmp_path, monkeypatch):
    """Each compile hashes 100+ modules: a module's hash is memoized by its file's stat,
    so a second compile reads nothing, and an edit (a notebook, ``kedro viz``) is seen."""
    source = tmp_path / "giblet_kedro" / "probe.py"
    source.parent.mkdir()
    source.write_text("def f(x):\n    return x + 1\n")
    monkeypatch.setattr(fingerprint, "module_file", lambda name: source)
    hashed = []
    real = fingerprint.source_hash
    monkeypatch.setattr(fingerprint, "source_hash", lambda text: hashed.append(text) or real(text))
    first = fingerprint.module_code_hash("giblet_kedro.probe")
    assert fingerprint.module_code_hash("giblet_kedro.probe") == first and len(hashed) == 1
    source.write_text("def f(x):\n    return x + 22\n")  # another size: a new stat even on a coarse clock
    assert fingerprint.module_code_hash("giblet_kedro.probe") != first and len(hashed) == 2


def test_the_predicted_movie_moves_only_the_in_silico_stages(project):
    """predict.stimulus defaults to the training movie (the same fingerprints as naming
    it); another movie, or new bytes in it, moves the new features and the prediction
    only: no data stage, no training."""
    raw = project / "data" / "01_raw"
    (raw / "movie.mp4").write_bytes(b"the training movie")
    (raw / "new.mp4").write_bytes(b"a new movie")
    stimulus = "stimulus: {video: {path: movie.mp4, size: [8, 6], frames_per_tr: 1}}\n"
    base = compile_text(project, extra=stimulus)

    def moved(other: dict[str, str]) -> set[str]:
        return {stage for stage in base if base[stage] != other[stage]}

    assert compile_text(project, extra=stimulus + "predict: {stimulus: movie.mp4}\n") == base
    assert moved(compile_text(project, extra=stimulus + "predict: {stimulus: new.mp4}\n")) == {"predict_stimulus",
                                                                                               "predict"}
    assert moved(compile_text(project, extra=stimulus + "predict: {onset_s: 3}\n")) == {"predict_stimulus", "predict"}
    newer = compile_text(project, extra=stimulus + "predict: {stimulus: new.mp4}\n")
    (raw / "new.mp4").write_bytes(b"another new movie")
    assert compile_text(project, extra=stimulus + "predict: {stimulus: new.mp4}\n")["predict_stimulus"] != \
        newer["predict_stimulus"]


def test_stage_code_versions_are_kept_on_disk_until_a_file_of_the_package_changes(tmp_path, monkeypatch):
    """A new process reads a stage's code hash from ``data/.giblet`` instead of parsing
    the import graph again; an edit anywhere in the package (here: a module the stage
    reaches through an import) makes it parse again, and the version moves."""
    import giblet_kedro.paths

    package = tmp_path / "src" / "giblet_kedro"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from giblet_kedro.b import helper\n\n\ndef f(x):\n    return helper(x)\n")
    (package / "b.py").write_text("def helper(x):\n    return x + 1\n")
    monkeypatch.setattr(fingerprint, "_package_root", lambda: package)
    monkeypatch.setattr(giblet_kedro.paths, "data_dir", lambda: tmp_path / "data")
    stage = (("giblet_kedro.a", "f"),)

    def new_process() -> None:
        monkeypatch.setattr(fingerprint.CodeVersionStore, "_loaded", {})
        for cached in (fingerprint.stage_code, fingerprint.module_imports, fingerprint._tree):
            cached.cache_clear()

    new_process()
    first = fingerprint.stage_code_version(stage)
    assert (tmp_path / "data" / ".giblet" / "code_versions.json").is_file()
    new_process()
    real = fingerprint.stage_code
    monkeypatch.setattr(fingerprint, "stage_code", lambda functions: pytest.fail("parsed again"))
    assert fingerprint.stage_code_version(stage) == first
    monkeypatch.setattr(fingerprint, "stage_code", real)
    (package / "b.py").write_text("def helper(x):\n    return x + 22\n")
    new_process()
    assert fingerprint.stage_code_version(stage) != first

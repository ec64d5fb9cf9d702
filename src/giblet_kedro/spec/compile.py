"""Compile a spec: resolve its paths, fingerprint every stage, place every cache.

The compiled experiment is what the catalog and parameters see (through the resolvers
in :mod:`giblet_kedro.spec.resolvers`): node parameters are sections of the resolved
spec, and each stage's outputs live under ``data/<layer>/<stage>/<fingerprint>/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from giblet_kedro.errors import InputDataError, SpecError
from giblet_kedro.paths import data_dir, raw_dir
from giblet_kedro.spec.bids import expand_bids
from giblet_kedro.spec.fingerprint import DigestCache, hash_payload, stage_code, stage_code_version
from giblet_kedro.spec.load import load_spec
from giblet_kedro.spec.reference import flatten, make_reference, parse_reference
from giblet_kedro.spec.schema import (
    FEATURE_FILE_KEYS,
    STIMULUS_FILE_FIELDS,
    ExperimentSpec,
    StimulusSpec,
    run_key,
)
from giblet_kedro.stimulus.weights import RANDOM, WeightsLookup, find_clip, find_encodec, is_tag

log = logging.getLogger(__name__)
DEMO_PLACEHOLDER = "{demo}"


@dataclass(frozen=True)
class Stage:
    """A cached stage: where its outputs live and the node functions that write them.

    Its code is derived from the import graph (:func:`stage_code`): the node functions'
    modules and every project module they reach, plus the installed versions of the
    tracked libraries (torch, nilearn, encodec, open_clip, himalaya) those import.
    """

    name: str
    layer: str
    functions: tuple[tuple[str, str], ...]

    def cache_root(self) -> Path:
        return data_dir() / self.layer / self.name

    @property
    def code_modules(self) -> frozenset[str]:
        return stage_code(self.functions)[0]

    def code_version(self) -> str:
        return stage_code_version(self.functions)


def _nodes(module: str, *functions: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"giblet_kedro.pipelines.{module}", name) for name in functions)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("demo", "01_raw", _nodes("demo_data.nodes", "generate_demo")),
        Stage("fmri_stats", "03_primary", _nodes("fmri.nodes", "inspect_runs", "make_split", "run_statistics",
                                                 "combine_statistics")),
        # Each group's runs normalized and summed (the map of the second pass).
        Stage("fmri_runs", "05_model_input", _nodes("fmri.nodes", "normalized_group")),
        Stage("fmri_tensor", "05_model_input", _nodes("fmri.nodes", "combine_normalized")),
        Stage("video_frames_tr", "04_feature", _nodes("stimulus.nodes", "extract_video_frames")),
        Stage("audio_codes_tr", "04_feature", _nodes("stimulus.nodes", "extract_audio_codes")),
        Stage("text_embeddings_tr", "04_feature", _nodes("stimulus.nodes", "extract_text_embeddings")),
        Stage("stimulus_features_tr", "04_feature", _nodes("stimulus.nodes", "extract_features")),
        *(Stage(name, "05_model_input", _nodes("stimulus.nodes", "apply_hrf"))
          for name in ("video_features", "audio_codes", "text_embeddings", "stimulus_features")),
        Stage("stimulus_alignment", "08_reporting", _nodes("stimulus.nodes", "check_stimulus_alignment")),
        Stage("train", "06_models", _nodes("train.nodes", "loss_statistics", "training_job", "train_model")),
        Stage("verify", "08_reporting", _nodes("train.nodes", "verify_training")),
        Stage("evaluate", "07_model_output", _nodes(
            "evaluate.nodes", "intersubject_agreement", "predict_test", "fit_ridge_reference", "score_voxels",
            "summarize_evaluation")),
        Stage("lesion", "07_model_output", _nodes("lesion.nodes", "run_lesions")),
        Stage("report", "08_reporting", _nodes("report.nodes", "draw_figures", "write_report")),
        Stage("fmri_heldout", "05_model_input", _nodes("fmri.nodes", "normalize_heldout")),
        Stage("predict_stimulus", "04_feature", _nodes("predict.nodes", "extract_new_stimulus")),
        Stage("predict", "07_model_output", _nodes("predict.nodes", "predict_response", "region_timecourses",
                                                   "score_heldout_runs", "modality_timing_test")),
    )
}


@dataclass(frozen=True)
class CompiledExperiment:
    """A validated spec with resolved paths, stage fingerprints and cache folders."""

    spec: ExperimentSpec
    spec_file: Path
    fingerprints: dict[str, str]
    stage_inputs: dict[str, dict[str, Any]] = field(repr=False)
    # ``--params`` overrides applied to the spec file (nested, as Kedro passes them).
    overrides: dict[str, Any] = field(default_factory=dict)
    # Where each feature extractor's weights were looked for, by modality.
    weights: dict[str, WeightsLookup] = field(default_factory=dict, repr=False)

    @property
    def reference(self) -> str:
        """The spec file plus its overrides, as one string (:mod:`giblet_kedro.spec.reference`)."""
        return make_reference(str(self.spec_file), self.overrides)

    def cache_dir(self, stage: str) -> Path:
        # A stage the spec leaves out (no demo section, no audio, ...) still names a
        # never-written folder so the catalog resolves; its node refuses to run.
        return STAGES[stage].cache_root() / self.fingerprints.get(stage, "not-in-spec")

    def params(self, section: str) -> Any:
        """A spec section as plain JSON-like data (what a node parameter receives)."""
        if section == "experiment":
            return {"name": self.spec.name, "seed": self.spec.seed, "spec_file": str(self.spec_file),
                    "overrides": flatten(self.overrides), "fingerprints": dict(self.fingerprints)}
        if section == "training":  # what the training job node reads (spec.schema.TrainingSettings)
            return {"model": self.params("model"), "loss": self.params("loss"), "train": self.params("train"),
                    "seed": self.spec.seed, "experiment": self.spec.name, "run_dir": str(self.cache_dir("train") / "run")}
        value = getattr(self.spec, section)
        return None if value is None else value.model_dump(mode="json")

    def describe(self) -> dict[str, Any]:
        """The compiled spec with each stage's fingerprint, for display."""
        return {
            "spec_file": str(self.spec_file),
            "overrides": flatten(self.overrides),
            "spec": self.spec.model_dump(mode="json"),
            "stages": {
                name: {"fingerprint": fp, "cache": str(self.cache_dir(name)), "reads": self.stage_inputs[name]}
                for name, fp in self.fingerprints.items()
            },
        }


# TR-aligned extraction stage -> the stage that applies the HRF to it (catalog names).
FINAL_FEATURES = {"video_frames_tr": "video_features", "audio_codes_tr": "audio_codes",
                  "text_embeddings_tr": "text_embeddings", "stimulus_features_tr": "stimulus_features"}


def demo_dir(demo_fingerprint: str) -> Path:
    return STAGES["demo"].cache_root() / demo_fingerprint


def resolve_path(value: str, demo_fingerprint: str | None) -> Path:
    """Spec path -> absolute path. ``{demo}`` is the demo data folder; relative paths
    resolve against ``data/01_raw/``; absolute paths are used as given."""
    if DEMO_PLACEHOLDER in value:
        assert demo_fingerprint is not None  # the schema guarantees a demo section
        return Path(value.replace(DEMO_PLACEHOLDER, str(demo_dir(demo_fingerprint)))).resolve()
    path = Path(value).expanduser()
    return path if path.is_absolute() else (raw_dir() / path).resolve()


class _InputFingerprinter:
    """Fingerprints of raw inputs: demo files by the demo stage, others by content."""

    def __init__(self, demo_fingerprint: str | None):
        self.demo_fingerprint = demo_fingerprint
        self.digests = DigestCache(data_dir() / ".giblet" / "digests.json")

    def __call__(self, spec_value: str, resolved: Path, label: str) -> str:
        if DEMO_PLACEHOLDER in spec_value:
            return f"demo:{self.demo_fingerprint}:{spec_value}"
        return self.digests.digest(resolved, label)


def _resolve_paths(spec: ExperimentSpec, demo_fp: str | None) -> ExperimentSpec:
    """The same spec with every file path absolute (``{demo}`` and ``data/01_raw/`` resolved)."""
    def resolve(value: str | None) -> str | None:
        return None if value is None else str(resolve_path(value, demo_fp))

    fmri = spec.fmri
    fmri_update: dict[str, Any] = {
        "subjects": {sid: {run: resolve(p) for run, p in runs.items()} for sid, runs in fmri.subject_files().items()},
        "heldout": {sid: resolve(p) for sid, p in fmri.heldout.items()},
        "mask": fmri.mask if fmri.mask in ("auto", "lab") else resolve(fmri.mask),
    }
    confounds = fmri.clean.confounds if fmri.clean else None
    if confounds is not None:
        fmri_update["clean"] = fmri.clean.model_copy(update={"confounds": confounds.model_copy(update={
            "files": {sid: {run: resolve(p) for run, p in runs.items()}
                      for sid, runs in fmri.confound_table_files().items()},
            "pattern": None,
            "heldout": {sid: resolve(p) for sid, p in confounds.heldout.items()},
        })})
    update: dict[str, Any] = {"fmri": fmri.model_copy(update=fmri_update)}
    stim = spec.stimulus
    if stim is not None:
        parts = {}
        for name, keys in STIMULUS_FILE_FIELDS.items():
            part = getattr(stim, name)
            if part is not None:
                # weights were resolved by resolve_weights (a file, random, or left as written)
                parts[name] = part.model_copy(update={k: resolve(getattr(part, k)) for k in keys if k != "weights"})
        parts["features"] = {name: feature.model_copy(update={k: resolve(getattr(feature, k))
                                                                for k in FEATURE_FILE_KEYS if hasattr(feature, k)})
                             for name, feature in stim.features.items()}
        update["stimulus"] = stim.model_copy(update=parts)
    if spec.lesion is not None:
        regions = {name: region.model_copy(update={"mask": resolve(region.mask), "atlas": resolve(region.atlas)})
                   for name, region in spec.lesion.regions.items()}
        update["lesion"] = spec.lesion.model_copy(update={"regions": regions})
    predict = spec.predict
    update["predict"] = predict.model_copy(update={
        "stimulus": resolve(predict.stimulus), "annotations": resolve(predict.annotations),
        "regions": {name: region.model_copy(update={"mask": resolve(region.mask), "atlas": resolve(region.atlas)})
                    for name, region in predict.regions.items()}})
    return spec.model_copy(update=update)


def with_predict_defaults(spec: ExperimentSpec) -> ExperimentSpec:
    """``predict`` as the stage reads it: the training movie and annotations where the
    section names none, the lesion section's regions where it names no regions."""
    predict, stim = spec.predict, spec.stimulus
    update: dict[str, Any] = {}
    if predict.stimulus is None and stim is not None and (stim.video or stim.audio):
        update["stimulus"] = (stim.video or stim.audio).path
        if predict.annotations is None and stim.text is not None:
            update["annotations"] = stim.text.annotations
    if not predict.regions and spec.lesion is not None:
        update["regions"] = dict(spec.lesion.regions)
    return spec.model_copy(update={"predict": predict.model_copy(update=update)}) if update else spec


def compile_spec(spec: ExperimentSpec, spec_file: Path, check_files: bool = True,
                 overrides: dict[str, Any] | None = None) -> CompiledExperiment:
    """Resolve paths and fingerprint each stage.

    With ``check_files=False`` missing raw files do not raise (their fingerprint is
    marked missing): used to display a spec or list caches before data exist.
    """
    if spec.fmri.bids is not None:
        spec = expand_bids(spec, resolve_path(spec.fmri.bids.root, None))
    spec = with_predict_defaults(spec)
    demo_fp = None
    reads: dict[str, dict[str, Any]] = {}
    fps: dict[str, str] = {}
    if spec.demo is not None:
        demo_files = {
            "subjects": {k: p for k, p in spec.fmri.run_files.items() if DEMO_PLACEHOLDER in p},
            "onsets": spec.run_onsets(),
            "heldout": {s: p for s, p in spec.fmri.heldout.items() if DEMO_PLACEHOLDER in p},
            "tr": spec.fmri.tr,
        }
        reads["demo"] = {"demo": spec.demo.model_dump(mode="json"), "files": demo_files,
                         "code": STAGES["demo"].code_version()}
        demo_fp = fps["demo"] = hash_payload(reads["demo"])

    fingerprint_input = _InputFingerprinter(demo_fp)
    spec, weights = resolve_weights(spec, demo_fp, check_files)

    def file_fp(spec_value: str, label: str) -> str:
        resolved = resolve_path(spec_value, demo_fp)
        try:
            return fingerprint_input(spec_value, resolved, label)
        except InputDataError:  # missing or unreadable; anything else is a bug and propagates
            if check_files:
                raise
            return "missing"

    fmri = spec.fmri
    subject_fps = {run_key(sid, run): file_fp(p, fmri.file_label(sid, run))
                   for sid, runs in fmri.subject_files().items() for run, p in runs.items()}
    mask_fp = fmri.mask if fmri.mask in ("auto", "lab") else file_fp(fmri.mask, "fmri.mask")
    clean = fmri.clean.model_dump(mode="json", exclude={"confounds": {"files", "pattern", "heldout"}}) \
        if fmri.clean else None
    reads["fmri_stats"] = {
        "subjects": subject_fps,
        "runs": {run: {"crop": fmri.run_crop(run)} for run in fmri.run_ids},
        "mask": mask_fp,
        "lab_mask": fmri.lab_mask.model_dump(mode="json") if fmri.mask == "lab" else None,
        "tr": fmri.tr,
        "ddof": fmri.zscore.ddof,
        "split": fmri.split.model_dump(mode="json"),
        "clean": clean,
        "confounds": {run_key(sid, run): file_fp(p, fmri.file_label(sid, run, "fmri.clean.confounds.files"))
                      for sid, runs in fmri.confound_table_files().items() for run, p in runs.items()},
        "chunk_trs": fmri.chunk_trs,
        "code": STAGES["fmri_stats"].code_version(),
    }
    fps["fmri_stats"] = hash_payload(reads["fmri_stats"])
    reads["fmri_runs"] = {"fmri_stats": fps["fmri_stats"], "mode": fmri.mode, "groups": fmri.subjects_per_group,
                          "code": STAGES["fmri_runs"].code_version()}
    fps["fmri_runs"] = hash_payload(reads["fmri_runs"])
    reads["fmri_tensor"] = {"fmri_runs": fps["fmri_runs"], "mode": fmri.mode,
                            "code": STAGES["fmri_tensor"].code_version()}
    fps["fmri_tensor"] = hash_payload(reads["fmri_tensor"])
    reads["fmri_heldout"] = {
        "fmri_stats": fps["fmri_stats"],
        "heldout": {sid: file_fp(p, f"fmri.heldout[{sid!r}]") for sid, p in fmri.heldout.items()},
        "confounds": {sid: file_fp(p, f"fmri.clean.confounds.heldout[{sid!r}]")
                      for sid, p in fmri.heldout_confound_files.items()},
        "code": STAGES["fmri_heldout"].code_version(),
    }
    fps["fmri_heldout"] = hash_payload(reads["fmri_heldout"])
    _stimulus_fingerprints(spec, reads, fps, file_fp, subject_fps)
    _training_fingerprints(spec, reads, fps)
    _evaluation_fingerprints(spec, reads, fps, file_fp)

    return CompiledExperiment(spec=_resolve_paths(spec, demo_fp), spec_file=spec_file,
                              fingerprints=fps, stage_inputs=reads, overrides=dict(overrides or {}), weights=weights)


def resolve_weights(spec: ExperimentSpec, demo_fp: str | None,
                    check_files: bool) -> tuple[ExperimentSpec, dict[str, WeightsLookup]]:
    """The spec with each extractor's ``weights`` made concrete (an absolute file, or
    ``random``), and where each was looked for (:mod:`giblet_kedro.stimulus.weights`).

    ``null`` with nothing found means random weights in a demo spec (with a warning) and
    is refused otherwise; a named file or tag that is missing is refused. With
    ``check_files=False`` an unresolved value is left as written (its fingerprint is
    marked missing) so a spec can be shown before its files exist.
    """
    stim = spec.stimulus
    if stim is None:
        return spec, {}
    lookups: dict[str, WeightsLookup] = {}
    if stim.audio is not None and stim.audio.model == "encodec_24khz":
        value = stim.audio.weights
        file = resolve_path(value, demo_fp) if value not in (None, RANDOM) else None
        lookups["audio"] = find_encodec(value, file)
    if stim.text is not None:
        value = stim.text.weights
        file = resolve_path(value, demo_fp) if value not in (None, RANDOM) and not is_tag(stim.text.model, value) \
            else None
        lookups["text"] = find_clip(stim.text.model, value, file)
    parts = {}
    for name, lookup in lookups.items():
        value = lookup.found
        if value is None and lookup.requested is None and spec.demo is not None:
            log.warning("%s: no pretrained weights given; the demo uses random weights", lookup.key)
            value = RANDOM
        if value is None:
            if check_files:
                raise SpecError(lookup.missing_message())
            continue
        parts[name] = getattr(stim, name).model_copy(update={"weights": value})
    return spec.model_copy(update={"stimulus": stim.model_copy(update=parts)}), lookups


def _stimulus_fingerprints(spec: ExperimentSpec, reads: dict, fps: dict, file_fp, subject_fps: dict) -> None:
    """Each modality is fingerprinted apart (a changed bandwidth recomputes audio only);
    the HRF step apart from extraction (a changed HRF never re-decodes the movie).

    Every modality depends on the fMRI TR grid (TR, each run's crop and movie onset;
    without a crop a run's TR count comes from its files, so their fingerprints stand in
    for it), never on the fMRI normalisation.
    """
    stim, fmri = spec.stimulus or StimulusSpec(), spec.fmri
    onsets = spec.run_onsets()
    grid = {"tr": fmri.tr, "runs": {run: {"crop": fmri.run_crop(run), "onset_s": onsets[run]} for run in fmri.run_ids},
            "files": None if all(fmri.run_crop(r) is not None for r in fmri.run_ids) else subject_fps}
    weights_fp = lambda part, key: (None if part.weights in (None, RANDOM)  # noqa: E731
                                    else file_fp(part.weights, f"stimulus.{key}.weights"))
    sections = {
        "video_frames_tr": stim.video and {
            "movie": file_fp(stim.video.path, "stimulus.video.path"), "size": stim.video.size,
            "frames_per_tr": stim.video.frames_per_tr},
        "audio_codes_tr": stim.audio and {
            "movie": file_fp(stim.audio.path, "stimulus.audio.path"), "model": stim.audio.model,
            "bandwidth": stim.audio.bandwidth if stim.audio.model != "mel" else None,
            "weights": weights_fp(stim.audio, "audio"), "chunk_s": stim.audio.chunk_s,
            "seed": spec.seed if stim.audio.weights in (None, RANDOM) else None},
        "stimulus_features_tr": bool(stim.features) and {
            name: {**feature.model_dump(mode="json"), **{key: file_fp(getattr(feature, key), f"stimulus.features.{name}.{key}")
                                                          for key in FEATURE_FILE_KEYS if hasattr(feature, key)}}
            for name, feature in stim.features.items()},
        "text_embeddings_tr": stim.text and {
            "annotations": file_fp(stim.text.annotations, "stimulus.text.annotations"),
            "start": stim.text.start, "end": stim.text.end, "columns": stim.text.columns,
            "model": stim.text.model, "weights": weights_fp(stim.text, "text"),
            "run_onsets_s": stim.text.run_onsets_s, "seed": spec.seed if stim.text.weights in (None, RANDOM) else None},
    }
    hrf = stim.hrf.model_dump(mode="json")
    for stage, payload in sections.items():
        payload = payload or {"absent": True}  # an empty cache, still specific to the grid
        reads[stage] = {**payload, "grid": grid, "code": STAGES[stage].code_version()}
        fps[stage] = hash_payload(reads[stage])
        final = FINAL_FEATURES[stage]
        reads[final] = {stage: fps[stage], "hrf": hrf, "code": STAGES[final].code_version()}
        fps[final] = hash_payload(reads[final])
    reads["stimulus_alignment"] = {name: fps[name] for name in FINAL_FEATURES.values()} | {
        "fmri_grid": grid, "code": STAGES["stimulus_alignment"].code_version()}
    fps["stimulus_alignment"] = hash_payload(reads["stimulus_alignment"])


def _training_fingerprints(spec: ExperimentSpec, reads: dict, fps: dict) -> None:
    """Training reads the fMRI tensor, the split, the feature caches (as extracted: the
    model's inputs; after the HRF step: its targets) and the model, loss and train sections
    (``devices`` included: the world size changes the batches)."""
    reads["train"] = {
        "fmri_stats": fps["fmri_stats"], "fmri_tensor": fps["fmri_tensor"],
        **{name: fps[name] for name in FINAL_FEATURES.values()},
        **{name: fps[name] for name in FINAL_FEATURES},
        "model": spec.model.model_dump(mode="json"), "loss": spec.loss.model_dump(mode="json"),
        "train": spec.train.model_dump(mode="json", exclude={"collective_timeout_s"}), "seed": spec.seed,
        "code": STAGES["train"].code_version()}
    fps["train"] = hash_payload(reads["train"])
    reads["verify"] = {"train": fps["train"], "verify": spec.verify.model_dump(mode="json"),
                       "code": STAGES["verify"].code_version()}
    fps["verify"] = hash_payload(reads["verify"])


def _evaluation_fingerprints(spec: ExperimentSpec, reads: dict, fps: dict, file_fp) -> None:
    """Evaluation reads the trained model and what it was trained on (subjects' data
    again, for the noise ceiling); lesions also read their region files; the report
    reads everything it shows."""
    trained = {"train": fps["train"], "fmri_stats": fps["fmri_stats"], "fmri_tensor": fps["fmri_tensor"],
               **{name: fps[name] for name in FINAL_FEATURES.values()}}
    reads["evaluate"] = {**trained, "evaluate": spec.evaluate.model_dump(mode="json", exclude={"ridge": {"backend"}}),
                         "code": STAGES["evaluate"].code_version()}
    fps["evaluate"] = hash_payload(reads["evaluate"])
    lesion = spec.lesion
    reads["lesion"] = {**trained, "lesion": None if lesion is None else {
        **lesion.model_dump(mode="json", exclude={"regions"}),
        "regions": {name: {"file": file_fp(region.file, f"lesion.regions.{name}"), "labels": region.labels}
                    for name, region in lesion.regions.items()}},
        "code": STAGES["lesion"].code_version()}
    fps["lesion"] = hash_payload(reads["lesion"])
    reads["report"] = {"verify": fps["verify"], "evaluate": fps["evaluate"], "lesion": fps["lesion"],
                       "code": STAGES["report"].code_version()}
    fps["report"] = hash_payload(reads["report"])
    _predict_fingerprints(spec, reads, fps, file_fp, trained)


def _predict_fingerprints(spec: ExperimentSpec, reads: dict, fps: dict, file_fp, trained: dict) -> None:
    """The new movie's features read the movie, the annotations and every extraction
    and HRF setting of the stimulus section (not its files); the prediction reads them,
    the trained model, the held-out runs and the rest of the ``predict`` section."""
    predict, stim = spec.predict, spec.stimulus or StimulusSpec()
    settings = stim.model_dump(mode="json", exclude={"device", "features", "onset_s"})
    for name, keys in STIMULUS_FILE_FIELDS.items():
        if settings.get(name):
            for key in keys:
                value = getattr(getattr(stim, name), key)
                settings[name][key] = (None if key != "weights" or value in (None, RANDOM)
                                       else file_fp(value, f"stimulus.{name}.weights"))
    reads["predict_stimulus"] = {
        "movie": predict.stimulus and file_fp(predict.stimulus, "predict.stimulus"),
        "annotations": predict.annotations and file_fp(predict.annotations, "predict.annotations"),
        "onset_s": predict.onset_s, "tr": spec.fmri.tr, "stimulus": settings, "seed": spec.seed,
        "audio_codes_tr": fps["audio_codes_tr"],  # its codebooks code the new movie's sound
        "code": STAGES["predict_stimulus"].code_version()}
    fps["predict_stimulus"] = hash_payload(reads["predict_stimulus"])
    reads["predict"] = {
        **trained, "predict_stimulus": fps["predict_stimulus"], "fmri_heldout": fps["fmri_heldout"],
        "training_movie": [stim.video and file_fp(stim.video.path, "stimulus.video.path"),
                           stim.audio and file_fp(stim.audio.path, "stimulus.audio.path")],
        "predict": {**predict.model_dump(mode="json", exclude={"stimulus", "annotations", "regions"}),
                    "regions": {name: {"file": file_fp(region.file, f"predict.regions.{name}"),
                                       "labels": region.labels} for name, region in predict.regions.items()}},
        "evaluate": spec.evaluate.model_dump(mode="json", exclude={"ridge"}),
        "code": STAGES["predict"].code_version()}
    fps["predict"] = hash_payload(reads["predict"])


def compile_experiment(reference: str, check_files: bool = True, env: str | None = None) -> CompiledExperiment:
    """Load (name, path or reference with overrides), validate and compile a spec."""
    spec, path = load_spec(reference, env)
    return compile_spec(spec, path, check_files=check_files, overrides=parse_reference(reference)[1])

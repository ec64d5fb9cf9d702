"""The experiment spec: one YAML file per experiment, validated end to end.

Every section of the product contract (DESIGN.md) is modelled here, including stages
that later issues implement, so a typo anywhere in a spec is caught before any node
runs. All models forbid unknown keys. Relative paths are resolved later, by
:mod:`giblet_kedro.spec.load`; this module only states what is acceptable.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

SUBJECT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SubjectId = Annotated[str, Field(pattern=SUBJECT_ID)]
Modality = Literal["video", "audio", "text", "fmri"]


class StrictModel(BaseModel):
    """Base for every spec section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- fMRI
class SubjectPattern(StrictModel):
    """Subjects given as a path pattern plus ids, e.g. ``raw/sub-{id}_bold.nii.gz``."""

    pattern: str
    ids: list[SubjectId] = Field(min_length=1)

    @field_validator("pattern")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{id}" not in value:
            raise ValueError("must contain the placeholder '{id}', e.g. 'raw/sub-{id}_bold.nii.gz'")
        return value

    @field_validator("ids")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        duplicates = sorted({v for v in value if value.count(v) > 1})
        if duplicates:
            raise ValueError(f"subject ids must be unique; repeated: {duplicates}")
        return value


class ZScoreSpec(StrictModel):
    """How voxels are standardized over time."""

    ddof: Literal[0, 1] = 1


class SplitSpec(StrictModel):
    """Contiguous blocks of TRs, in time order: train, then val, then test.

    Fractions of the cropped run; block sizes are rounded to whole TRs.
    """

    val: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    test: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitSpec:
        if self.val + self.test >= 0.9:
            raise ValueError(
                f"val + test = {self.val + self.test:g} leaves less than 10% of TRs for training; "
                "accepted: val + test < 0.9"
            )
        return self


class LabMaskRule(StrictModel):
    """The lab's mask rule (used when ``mask: lab``).

    Keep a voxel when its temporal std over the first ``first_trs`` TRs of the crop
    exceeds the ``percentile``-th percentile of that subject's nonzero stds, in at
    least ``min_subject_fraction`` of the subjects.
    """

    first_trs: PositiveInt = 200
    percentile: Annotated[float, Field(ge=0, le=100)] = 10.0
    min_subject_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5


class FmriSpec(StrictModel):
    """The fMRI stage: per-subject 4D NIfTI -> mask -> z-score -> (average)."""

    subjects: dict[SubjectId, str] | SubjectPattern
    mask: str = "auto"
    lab_mask: LabMaskRule = LabMaskRule()
    tr: PositiveFloat
    trs: tuple[NonNegativeInt, PositiveInt] | None = None
    zscore: ZScoreSpec = ZScoreSpec()
    mode: Literal["cross_subject", "per_subject"] = "cross_subject"
    split: SplitSpec = SplitSpec()
    heldout: dict[SubjectId, str] = Field(default_factory=dict)
    chunk_trs: Annotated[int, Field(ge=1, le=4096)] = 64

    @field_validator("subjects")
    @classmethod
    def _not_empty(cls, value):
        if isinstance(value, dict) and not value:
            raise ValueError("the subject list is empty; give at least one subject id -> file")
        return value

    @field_validator("mask")
    @classmethod
    def _mask_kind(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("accepted: 'auto', 'lab', or the path of a NIfTI mask")
        return value

    @field_validator("trs")
    @classmethod
    def _crop_ordered(cls, value):
        if value is not None and value[1] <= value[0]:
            raise ValueError(f"[start, stop] needs stop > start, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _heldout_subjects_known(self) -> FmriSpec:
        unknown = sorted(set(self.heldout) - set(self.subject_ids))
        if unknown:
            raise ValueError(
                f"heldout names subjects {unknown} that are not in fmri.subjects "
                f"({self.subject_ids}); held-out runs are normalized with a training subject's stats"
            )
        return self

    @property
    def subject_ids(self) -> list[str]:
        if isinstance(self.subjects, SubjectPattern):
            return list(self.subjects.ids)
        return list(self.subjects)

    @property
    def mask_files(self) -> dict[str, str]:
        """``{"mask": path}`` when the mask is a file, else empty."""
        return {} if self.mask in ("auto", "lab") else {"mask": self.mask}

    def subject_files(self) -> dict[str, str]:
        """Subject id -> path as written in the spec (not yet resolved)."""
        if isinstance(self.subjects, SubjectPattern):
            return {i: self.subjects.pattern.replace("{id}", i) for i in self.subjects.ids}
        return dict(self.subjects)


# ----------------------------------------------------------------------- stimulus
class VideoSpec(StrictModel):
    path: str
    size: tuple[PositiveInt, PositiveInt] = (160, 90)
    frames_per_tr: PositiveInt = 3


class AudioSpec(StrictModel):
    """Soundtrack -> EnCodec codes (or ``mel``: a log-mel spectrogram, no weights needed)."""

    path: str
    model: Literal["encodec_24khz", "mel"] = "encodec_24khz"
    bandwidth: Literal[1.5, 3.0, 6.0, 12.0, 24.0] = 3.0
    weights: str | None = None
    chunk_s: Annotated[int, Field(ge=2, le=600)] = 10


class TextSpec(StrictModel):
    annotations: str
    start: str = "Start Time (s)"
    end: str = "End Time (s)"
    columns: list[str] = Field(min_length=1)
    model: str = "ViT-B-32"
    weights: str | None = None
    run_onsets_s: list[NonNegativeFloat] | None = None
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64


class HrfSpec(StrictModel):
    kind: Literal["glover", "spm", "none"] = "glover"
    delay_s: NonNegativeFloat = 0.0


class StimulusSpec(StrictModel):
    """The movie the subjects watched. ``onset_s``: movie time at which the fMRI run's
    first volume began. ``device``: where EnCodec and CLIP run (not part of any
    fingerprint: results agree to float rounding)."""

    video: VideoSpec | None = None
    audio: AudioSpec | None = None
    text: TextSpec | None = None
    hrf: HrfSpec = HrfSpec()
    onset_s: float = 0.0
    device: Literal["auto", "cpu", "cuda"] = "auto"


# ------------------------------------------------------------- model and training
class ModelSpec(StrictModel):
    bottleneck: PositiveInt | Literal["voxels"] = 2048
    hidden: PositiveInt = 1024
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3


class LossSpec(StrictModel):
    normalize: Literal["variance", "std", "none"] = "variance"
    weights: dict[Modality, NonNegativeFloat] = Field(
        default_factory=lambda: {"video": 1.0, "audio": 1.0, "text": 1.0, "fmri": 1.0}
    )


class TrainSpec(StrictModel):
    epochs: PositiveInt = 50
    batch_size: PositiveInt = 2
    lr: PositiveFloat = 1.0e-3
    weight_decay: NonNegativeFloat = 1.0e-5
    warmup_epochs: NonNegativeInt = 10
    grad_clip: PositiveFloat | None = 1.0
    precision: Literal["bf16", "fp32"] = "bf16"
    devices: PositiveInt | Literal["auto"] = "auto"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    checkpoint_every: PositiveInt = 10
    early_stop_patience: PositiveInt | None = None

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> TrainSpec:
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs}); "
                "accepted: warmup_epochs <= epochs"
            )
        return self


class VerifySpec(StrictModel):
    min_loss_drop: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    drop_within_epochs: PositiveInt = 3
    strict: bool = False


# --------------------------------------------------------------------------- demo
class DemoSpec(StrictModel):
    """The synthetic dataset the project generates itself (no downloads).

    Files are written under ``data/01_raw/demo/<fingerprint>/``; spec paths refer to
    that folder as ``{demo}``. One run is generated per subject of ``fmri.subjects``
    (and per held-out run), all from one stimulus and one ground-truth map.
    """

    n_trs: Annotated[int, Field(ge=20, le=5000)] = 200
    tr: PositiveFloat = 1.5
    grid: tuple[PositiveInt, PositiveInt, PositiveInt] = (14, 16, 12)
    voxel_size_mm: PositiveFloat = 3.0
    fps: Annotated[int, Field(ge=1, le=60)] = 8
    frame_size: tuple[PositiveInt, PositiveInt] = (64, 36)
    audio_rate: Literal[16000, 22050, 24000, 44100, 48000] = 24000
    noise: NonNegativeFloat = 0.5
    seed: NonNegativeInt = 0


# --------------------------------------------------------------------- experiment
# The file-valued fields of each stimulus section (one list: resolution, fingerprints
# and staleness checks all walk it).
STIMULUS_FILE_FIELDS = {"video": ("path",), "audio": ("path", "weights"), "text": ("annotations", "weights")}


class ExperimentSpec(StrictModel):
    """A whole experiment: what data, which preprocessing, which model, how to train."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=120)]
    seed: NonNegativeInt = 0
    demo: DemoSpec | None = None
    fmri: FmriSpec
    stimulus: StimulusSpec | None = None
    model: ModelSpec = ModelSpec()
    loss: LossSpec = LossSpec()
    train: TrainSpec = TrainSpec()
    verify: VerifySpec = VerifySpec()

    @model_validator(mode="after")
    def _demo_placeholder_needs_demo(self) -> ExperimentSpec:
        if self.demo is not None:
            fmri_paths = {**self.fmri.subject_files(), **{f"heldout {k}": v for k, v in self.fmri.heldout.items()}}
            outside = sorted(k for k, p in fmri_paths.items() if "{demo}" not in p)
            if outside:
                raise ValueError(
                    f"with a 'demo' section every fMRI run is generated, so each path must start "
                    f"with '{{demo}}/'; these do not: {outside}"
                )
        if self.demo is None:
            uses = [p for p in self.input_files().values() if "{demo}" in p]
            if uses:
                raise ValueError(
                    f"paths {uses} use '{{demo}}' but the spec has no 'demo' section; "
                    "add 'demo: {}' to generate the demo data, or give real file paths"
                )
        return self

    def input_files(self) -> dict[str, str]:
        """Every file the spec reads, keyed by its spec key path (e.g. ``fmri.subjects['01']``)."""
        files = {f"fmri.subjects[{sid!r}]": p for sid, p in self.fmri.subject_files().items()}
        files |= {f"fmri.heldout[{sid!r}]": p for sid, p in self.fmri.heldout.items()}
        files |= {f"fmri.{key}": p for key, p in self.fmri.mask_files.items()}
        if self.stimulus is not None:
            for section, keys in STIMULUS_FILE_FIELDS.items():
                part = getattr(self.stimulus, section)
                for key in keys if part is not None else ():
                    if getattr(part, key):
                        files[f"stimulus.{section}.{key}"] = getattr(part, key)
        return files


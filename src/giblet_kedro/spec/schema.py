"""The experiment spec: one YAML file per experiment, validated end to end.

Every section a spec can hold is modelled here, including stages
that later issues implement, so a typo anywhere in a spec is caught before any node
runs. All models forbid unknown keys. Relative paths are resolved later, by
:mod:`giblet_kedro.spec.load`; this module only states what is acceptable.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)

SUBJECT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SubjectId = Annotated[str, Field(pattern=SUBJECT_ID)]
Modality = Literal["video", "audio", "text", "features", "fmri"]


class StrictModel(BaseModel):
    """Base for every spec section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- fMRI
RunId = Annotated[str, Field(pattern=SUBJECT_ID)]
# The run id of a subject given as one file.
DEFAULT_RUN = "1"
# One subject's runs: one file, files in run order (ids "1", "2", ...), or run id -> file.
SubjectRuns = str | Annotated[list[str], Field(min_length=1)] | Annotated[dict[RunId, str], Field(min_length=1)]


def runs_of(value: SubjectRuns) -> dict[str, str]:
    """One subject's ``SubjectRuns`` as run id -> path, in run order."""
    if isinstance(value, str):
        return {DEFAULT_RUN: value}
    if isinstance(value, list):
        return {str(i + 1): path for i, path in enumerate(value)}
    return dict(value)


def _unique_ids(value: list[str], what: str) -> list[str]:
    duplicates = sorted({v for v in value if value.count(v) > 1})
    if duplicates:
        raise ValueError(f"{what} must be unique; repeated: {duplicates}")
    return value


class SubjectPattern(StrictModel):
    """Subjects given as a path pattern plus ids, e.g. ``raw/sub-{id}_bold.nii.gz``;
    with ``runs``, the pattern also holds ``{run}``: ``raw/sub-{id}_run-{run}_bold.nii.gz``."""

    pattern: str
    ids: list[SubjectId] = Field(min_length=1)
    runs: list[RunId] | None = Field(default=None, min_length=1)

    @field_validator("pattern")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{id}" not in value:
            raise ValueError("must contain the placeholder '{id}', e.g. 'raw/sub-{id}_bold.nii.gz'")
        return value

    @field_validator("ids")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return _unique_ids(value, "subject ids")

    @model_validator(mode="after")
    def _run_placeholder(self) -> SubjectPattern:
        _unique_ids(self.runs or [], "run ids")
        if self.runs is not None and "{run}" not in self.pattern:
            raise ValueError("with 'runs' the pattern must contain '{run}', e.g. 'raw/sub-{id}_run-{run}_bold.nii.gz'")
        if self.runs is None and "{run}" in self.pattern:
            raise ValueError("the pattern contains '{run}'; list the run ids in 'runs', e.g. runs: ['1', '2']")
        return self

    def files(self) -> dict[str, dict[str, str]]:
        runs = self.runs or [DEFAULT_RUN]
        return {sid: {run: self.pattern.replace("{id}", sid).replace("{run}", run) for run in runs}
                for sid in self.ids}


class RunSpec(StrictModel):
    """Settings of one run (the same for every subject).

    ``onset_s``: movie time, in seconds, at which the run's first volume (file TR 0)
    began. ``trs``: this run's crop, in TRs of its file (default: ``fmri.trs``, or the
    whole run).
    """

    onset_s: NonNegativeFloat | None = None
    trs: tuple[NonNegativeInt, PositiveInt] | None = None

    @field_validator("trs")
    @classmethod
    def _crop_ordered(cls, value):
        if value is not None and value[1] <= value[0]:
            raise ValueError(f"[start, stop] needs stop > start, got {list(value)}")
        return value


class ZScoreSpec(StrictModel):
    """How voxels are standardized over time."""

    ddof: Literal[0, 1] = 1


GAP_SECONDS = 15.0  # what split.gap_trs: auto leaves between blocks: the HRF's extent


class SplitSpec(StrictModel):
    """Which TRs train, validate and test.

    ``by: blocks`` (default): in each run, contiguous blocks in time order (train, then
    val, then test); ``val`` and ``test`` are fractions of the run's cropped TRs,
    rounded to whole TRs. ``by: run``: ``test`` lists the runs held out whole; ``val``
    lists runs too, or is a fraction: the last TRs of each training run (e.g. train on
    run 1 with its last 10% for validation, test on run 2).

    ``gap_trs``: TRs left unused between two blocks of one run (train | gap | val | gap |
    test), so that no training target shares a haemodynamic response, a filter's reach or
    autocorrelated noise with a val or test TR. ``auto``: ``ceil(15 s / tr)`` (10 TRs at
    1.5 s), shortened, with a warning, where a run is too short to hold it; a number is
    used as given.
    """

    by: Literal["blocks", "run"] = "blocks"
    val: Annotated[float, Field(ge=0.0, lt=1.0)] | list[RunId] = 0.1
    test: Annotated[float, Field(ge=0.0, lt=1.0)] | list[RunId] = 0.1
    gap_trs: NonNegativeInt | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _consistent(self) -> SplitSpec:
        if self.by == "blocks":
            if isinstance(self.val, list) or isinstance(self.test, list):
                raise ValueError(
                    "with by: blocks, val and test are fractions of each run's TRs (e.g. 0.1); "
                    "to hold out whole runs write by: run, test: [...]"
                )
            if self.val + self.test >= 0.9:
                raise ValueError(
                    f"val + test = {self.val + self.test:g} leaves less than 10% of TRs for training; "
                    "accepted: val + test < 0.9"
                )
            return self
        if not isinstance(self.test, list):
            raise ValueError("with by: run, test lists run ids (e.g. test: ['2']); val lists run ids or is a "
                             "fraction of each training run")
        if isinstance(self.val, list):
            both = sorted(set(self.val) & set(self.test))
            if both:
                raise ValueError(f"runs {both} are in both val and test; a run belongs to one split")
        elif self.val >= 0.9:
            raise ValueError(f"val = {self.val:g} leaves less than 10% of each training run; accepted: val < 0.9")
        return self

    @property
    def val_runs(self) -> list[str]:
        return list(self.val) if isinstance(self.val, list) else []

    def split_of_run(self, run: str) -> str:
        """``by: run`` only: 'train', 'val' or 'test' (a training run may still end in a
        validation block when ``val`` is a fraction)."""
        return "val" if run in self.val_runs else "test" if run in self.test else "train"


class LabMaskRule(StrictModel):
    """The lab's mask rule (used when ``mask: lab``).

    Keep a voxel when its temporal std over the first ``first_trs`` TRs of the crop
    exceeds the ``percentile``-th percentile of that subject's nonzero stds, in at
    least ``min_subject_fraction`` of the subjects.
    """

    first_trs: PositiveInt = 200
    percentile: Annotated[float, Field(ge=0, le=100)] = 10.0
    min_subject_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5


class ConfoundSpec(StrictModel):
    """Confound tables to regress out, one per subject and run.

    ``files`` (same shape as ``fmri.subjects``) or ``pattern`` (with ``{id}`` and, for
    several runs, ``{run}``); with ``fmri.bids`` neither: fMRIPrep's
    ``*_desc-confounds_timeseries.tsv`` are found by name. A ``.tsv``/``.csv`` has a
    header row; any other file is whitespace-separated numbers without a header (SPM's
    ``rp_*.txt``). ``columns``: header names (or 0-based indices for headerless files) to
    use; all if omitted. ``skip_rows``: rows that precede the run's first volume (volumes
    discarded from the brain data only); without it the table must have one row per
    volume. ``heldout``: subject id -> table for ``fmri.heldout`` runs.

    ``strategy`` (runs named as fMRIPrep names them, e.g. found by ``fmri.bids``): the
    confounds are chosen by
    nilearn's ``load_confounds_strategy`` (``simple``: motion + WM/CSF; ``compcor``;
    ``scrubbing``; ``ica_aroma``), with ``strategy_options`` passed on (e.g. ``motion:
    basic``, ``fd_threshold: 0.5``); ``columns`` is then not used. Confounds are read
    raw (``demean: false``) and standardized block by block like any table. Volumes the
    strategy censors (scrubbing, non-steady-state) are dropped from the statistics, the
    cleaning (nilearn's ``sample_mask``), the subjects' average at that TR and the
    samples; val and test TRs are those no subject has censored (censoring in
    ``fmri.heldout`` runs is refused).
    """

    files: dict[SubjectId, SubjectRuns] | None = None
    pattern: str | None = None
    columns: list[str | NonNegativeInt] | None = Field(default=None, min_length=1)
    skip_rows: NonNegativeInt | None = None
    standardize: bool = True
    heldout: dict[SubjectId, str] = Field(default_factory=dict)
    strategy: Literal["simple", "compcor", "scrubbing", "ica_aroma"] | None = None
    strategy_options: dict[str, str | int | float | bool | list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ConfoundSpec:
        if self.strategy is not None and self.columns is not None:
            raise ValueError(f"strategy: {self.strategy} chooses the confound columns; leave 'columns' out")
        if self.strategy is None and self.strategy_options:
            raise ValueError("strategy_options needs a strategy (simple, compcor, scrubbing, ica_aroma)")
        if self.files is not None and self.pattern is not None:
            raise ValueError("give confound tables as 'files' or as 'pattern', not both")
        if self.pattern is not None and "{id}" not in self.pattern:
            raise ValueError("the confound pattern must contain '{id}' (and '{run}' for several runs)")
        return self


class CleanSpec(StrictModel):
    """Signal cleaning before the z-score, by nilearn's ``signal.clean`` (off unless
    ``fmri.clean`` is given). Each run is cleaned on its own, after its crop."""

    detrend: bool = True
    high_pass_hz: PositiveFloat | None = None
    low_pass_hz: PositiveFloat | None = None
    filter: Literal["butterworth", "cosine"] = "butterworth"
    confounds: ConfoundSpec | None = None

    @model_validator(mode="after")
    def _bands(self) -> CleanSpec:
        if self.high_pass_hz and self.low_pass_hz and self.high_pass_hz >= self.low_pass_hz:
            raise ValueError(f"high_pass_hz ({self.high_pass_hz:g}) must be below low_pass_hz ({self.low_pass_hz:g})")
        if self.filter == "cosine" and self.low_pass_hz:
            raise ValueError("filter: cosine is a high-pass filter only; use filter: butterworth for low_pass_hz")
        return self


class BidsSpec(StrictModel):
    """Find subjects, runs, TR and confounds in a BIDS (or fMRIPrep derivatives) folder.

    Files matched: ``sub-<id>/[ses-*/]func/sub-<id>[_ses-*]_task-<task>[_run-<run>]
    [_space-<space>][_desc-<desc>]_bold.nii[.gz]``. ``subjects``: ids to use (default:
    every subject found).
    """

    root: str
    task: Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$")]
    space: Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$")] | None = None
    desc: Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$")] | None = None
    subjects: list[SubjectId] | None = Field(default=None, min_length=1)


def _subjects_kind(value) -> str:
    """A mapping with a ``pattern`` key is a pattern; any other maps ids to files."""
    if isinstance(value, SubjectPattern) or (isinstance(value, dict) and "pattern" in value):
        return "subject-pattern"
    return "subject-files"


class FmriSpec(StrictModel):
    """The fMRI stage: per-subject 4D NIfTI runs -> crop -> (clean) -> mask -> z-score
    per run -> concatenate runs -> (average subjects).

    ``space``: the template the runs are in (``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``,
    ...; with ``fmri.bids`` its ``space`` is used when this is left out). Data in an MNI
    space get their maps drawn over nilearn's MNI template too (``plot_stat_map``,
    ``plot_glass_brain`` and an interactive ``view_img`` page in the report); other data
    are shown as voxel-grid slices.
    """

    subjects: Annotated[
        Annotated[SubjectPattern, Tag("subject-pattern")] | Annotated[dict[SubjectId, SubjectRuns], Tag("subject-files")],
        Discriminator(_subjects_kind),
    ] | None = None
    bids: BidsSpec | None = None
    runs: dict[RunId, RunSpec] = Field(default_factory=dict)
    mask: str = "auto"
    lab_mask: LabMaskRule = LabMaskRule()
    tr: PositiveFloat | None = None
    trs: tuple[NonNegativeInt, PositiveInt] | None = None
    clean: CleanSpec | None = None
    zscore: ZScoreSpec = ZScoreSpec()
    mode: Literal["cross_subject", "per_subject"] = "cross_subject"
    split: SplitSpec = SplitSpec()
    heldout: dict[SubjectId, str] = Field(default_factory=dict)
    chunk_trs: Annotated[int, Field(ge=1, le=4096)] = 64
    # Subjects z-scored and summed by one map node of the second pass (the partial it
    # writes is one run per group, not per subject); fewer per group, more parallel nodes.
    subjects_per_group: Annotated[int, Field(ge=1)] = 4
    # The first pass keeps each run's voxels as it decompressed them, and the second pass
    # reads them instead of decompressing the run again (giblet_kedro.fmri.kept): the same
    # values, a decompression less per run, the disk of the kept voxels (n_trs x voxels x
    # the file's bytes per value, per run). Not in the fingerprint: it changes no output.
    keep_decompressed: bool = True
    space: Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$")] | None = None

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
    def _source(self) -> FmriSpec:
        if (self.subjects is None) == (self.bids is None):
            raise ValueError("give the runs either as 'subjects' (files or a pattern) or as 'bids' (a BIDS folder)")
        if self.tr is None and self.bids is None:
            raise ValueError("fmri.tr is required (seconds per volume); it may be left out only with fmri.bids, "
                             "whose sidecar JSON gives it")
        return self

    @model_validator(mode="after")
    def _runs_consistent(self) -> FmriSpec:
        if self.subjects is None:  # BIDS: checked once the folder has been read
            return self
        files = self.subject_files()
        expected = list(next(iter(files.values())))
        for sid, runs in files.items():
            if list(runs) != expected:
                raise ValueError(
                    f"subject {sid!r} has runs {list(runs)} but subject {next(iter(files))!r} has {expected}; "
                    "every subject needs the same runs, in the same order (they are averaged TR by TR)"
                )
        unknown = sorted(set(self.runs) - set(expected))
        if unknown:
            raise ValueError(f"fmri.runs names runs {unknown} that no subject has; runs: {expected}")
        if self.split.by == "run":
            named = [*self.split.val_runs, *self.split.test]
            unknown = sorted(set(named) - set(expected))
            if unknown:
                raise ValueError(f"fmri.split names runs {unknown}; the subjects' runs are {expected}")
            if not set(expected) - set(named):
                raise ValueError(f"fmri.split leaves no run for training (runs: {expected})")
        unknown = sorted(set(self.heldout) - set(files))
        if unknown:
            raise ValueError(
                f"heldout names subjects {unknown} that are not in fmri.subjects "
                f"({list(files)}); held-out runs are normalized with a training subject's stats"
            )
        confounds = self.clean.confounds if self.clean else None
        if confounds is not None:
            if confounds.files is None and confounds.pattern is None:
                raise ValueError("fmri.clean.confounds needs 'files' or 'pattern' (or fmri.bids, which finds them)")
            if confounds.files is not None:
                table_files = {sid: runs_of(v) for sid, v in confounds.files.items()}
                wrong = {sid: list(table_files.get(sid, {})) for sid in files
                         if list(table_files.get(sid, {})) != list(files[sid])}
                if wrong:
                    raise ValueError(
                        f"fmri.clean.confounds.files must give one table per subject and run ({expected}); "
                        f"these subjects do not match: {wrong}"
                    )
            if confounds.pattern is not None and len(expected) > 1 and "{run}" not in confounds.pattern:
                raise ValueError("with several runs the confound pattern must contain '{run}'")
            missing = sorted(set(self.heldout) - set(confounds.heldout))
            if missing:
                raise ValueError(
                    f"confounds are regressed out of every run, so the held-out runs of subjects {missing} "
                    "need tables too: give fmri.clean.confounds.heldout: {id: file}"
                )
        return self

    @property
    def subject_ids(self) -> list[str]:
        if isinstance(self.subjects, SubjectPattern):
            return list(self.subjects.ids)
        return list(self.subjects or {})

    @property
    def world_space(self) -> str | None:
        """``space``, else the BIDS ``space-`` entity, else None (voxel space)."""
        return self.space or (self.bids.space if self.bids is not None else None)

    @property
    def run_ids(self) -> list[str]:
        """Run ids in concatenation order (the same for every subject)."""
        files = self.subject_files()
        return list(next(iter(files.values()))) if files else []

    @property
    def run_keys(self) -> list[tuple[str, str]]:
        """Every (subject, run), subjects then runs: the order of the statistics and tensors."""
        return [(sid, run) for sid in self.subject_ids for run in self.run_ids]

    def run_crop(self, run: str) -> tuple[int, int] | None:
        """The run's crop in file TRs: ``runs[run].trs``, else ``fmri.trs``, else None (whole run)."""
        settings = self.runs.get(run)
        return settings.trs if settings is not None and settings.trs is not None else self.trs

    def file_label(self, subject: str, run: str, key: str = "fmri.subjects") -> str:
        """The spec key of one run's file: ``fmri.subjects['01']`` (one run) or
        ``fmri.subjects['01']['2']``."""
        return f"{key}[{subject!r}]" + (f"[{run!r}]" if len(self.run_ids) > 1 else "")

    @property
    def run_files(self) -> dict[str, str]:
        """``"<subject>/<run>"`` -> path, for every subject and run (the catalog's keys)."""
        return {run_key(sid, run): path for sid, runs in self.subject_files().items() for run, path in runs.items()}

    def confound_table_files(self) -> dict[str, dict[str, str]]:
        """Subject -> run -> confound table path (empty when confounds are not regressed)."""
        confounds = self.clean.confounds if self.clean else None
        if confounds is None or self.subjects is None:
            return {}
        if confounds.files is not None:
            return {sid: runs_of(confounds.files[sid]) for sid in self.subject_ids}
        if confounds.pattern is None:
            return {}
        return {sid: {run: confounds.pattern.replace("{id}", sid).replace("{run}", run) for run in runs}
                for sid, runs in self.subject_files().items()}

    @property
    def confound_files(self) -> dict[str, str]:
        """``"<subject>/<run>"`` -> confound table (the catalog's keys)."""
        return {run_key(sid, run): path for sid, runs in self.confound_table_files().items()
                for run, path in runs.items()}

    @property
    def heldout_confound_files(self) -> dict[str, str]:
        confounds = self.clean.confounds if self.clean else None
        return {sid: confounds.heldout[sid] for sid in self.heldout} if confounds is not None else {}

    @property
    def mask_files(self) -> dict[str, str]:
        """``{"mask": path}`` when the mask is a file, else empty."""
        return {} if self.mask in ("auto", "lab") else {"mask": self.mask}

    def subject_files(self) -> dict[str, dict[str, str]]:
        """Subject id -> run id -> path, as written in the spec (not yet resolved)."""
        if isinstance(self.subjects, SubjectPattern):
            return self.subjects.files()
        return {sid: runs_of(value) for sid, value in (self.subjects or {}).items()}


def run_key(subject: str, run: str) -> str:
    """The key of one subject's run in catalog datasets: ``"<subject>/<run>"`` (ids never
    contain '/')."""
    return f"{subject}/{run}"


def split_run_key(key: str) -> tuple[str, str]:
    subject, _, run = key.partition("/")
    return subject, run


# ----------------------------------------------------------------------- stimulus
class VideoSpec(StrictModel):
    path: str
    size: tuple[PositiveInt, PositiveInt] = (160, 90)
    frames_per_tr: PositiveInt = 3


class AudioSpec(StrictModel):
    """Soundtrack -> EnCodec codes (or ``mel``: a log-mel spectrogram, no weights needed).

    ``weights``: ``null`` (default) reads the pretrained EnCodec 24 kHz checkpoint from the
    torch hub cache (``$TORCH_HOME/hub/checkpoints/encodec_24khz-d7cc33bc.th``); a path
    names a local state dict; ``random`` is random, seeded weights, on purpose (reports
    say so). Nothing is downloaded; a missing file is an error saying what to fetch
    (``kedro giblet weights``). Only a spec with ``demo:`` falls back to random weights.
    """

    path: str
    model: Literal["encodec_24khz", "mel"] = "encodec_24khz"
    bandwidth: Literal[1.5, 3.0, 6.0, 12.0, 24.0] = 3.0
    weights: str | None = None
    chunk_s: Annotated[int, Field(ge=2, le=600)] = 10


class TextSpec(StrictModel):
    """Annotation table -> CLIP text embeddings of the named columns, per segment. A Praat
    ``.TextGrid`` works too: ``columns`` then names its tier (``[word]``), each spoken word
    a segment.

    ``weights``: an open_clip pretrained tag of ``model`` (``laion2b_s34b_b79k``,
    ``openai``, ...) read offline from the Hugging Face cache (``HF_HOME``), a path to a
    checkpoint, or ``random`` (random, seeded weights, on purpose). ``null`` is accepted
    only in a spec with ``demo:`` (random weights); otherwise it is an error listing the
    model's tags and which of them are cached.
    """

    annotations: str
    start: str = "Start Time (s)"
    end: str = "End Time (s)"
    columns: list[str] = Field(min_length=1)
    model: str = "ViT-B-32"
    weights: str | None = None
    run_onsets_s: list[NonNegativeFloat] | None = None
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64


class HrfSpec(StrictModel):
    """The haemodynamic response between a stimulus feature and the BOLD signal.

    ``glover``/``spm``: nilearn's canonical HRF, integrated over each TR's window (the
    features are window means). ``slice_time_ref``: where in its TR a volume's time lies,
    as a fraction (fMRIPrep's ``--slice-time-ref``; 0.5 = the middle, its default; 0 =
    the start, for data without slice-timing correction). ``none``: shift every feature
    later by ``delay_s`` (whole TRs).
    """

    kind: Literal["glover", "spm", "none"] = "glover"
    delay_s: NonNegativeFloat = 0.0
    slice_time_ref: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5


class TableFeatureSpec(StrictModel):
    """Columns of an annotation table (one row per segment, xlsx/csv/tsv) as features.

    ``columns``: column -> ``numeric`` (the value) or ``categorical`` (one-hot, one
    feature per distinct value). Names match after stripping spaces. A TR takes the
    time-weighted mean over the segments overlapping its window (an empty cell is left
    out); a TR that no segment covers is invalid. Times restarting at 0 (a table holding
    several runs) need ``run_onsets_s``, the movie time each run's rows start at.
    """

    table: str
    start: str = "Start Time (s)"
    end: str = "End Time (s)"
    columns: Annotated[dict[str, Literal["numeric", "categorical"]], Field(min_length=1)]
    run_onsets_s: list[NonNegativeFloat] | None = None


class ArrayFeatureSpec(StrictModel):
    """Precomputed features, ``(n_samples, n_features)``: ``.npy``, ``.npz`` (array
    ``key``, default its only array), ``.parquet`` or ``.tsv`` (every numeric column
    but ``timestamps``). Sample ``k`` is at movie time ``onset_s + k / rate_hz``, or at
    ``timestamps`` (seconds: an npz key or a column). A TR takes the mean of its samples,
    or, at rates below one per TR, the value interpolated at its centre; a TR outside the
    samples is invalid."""

    path: str
    rate_hz: PositiveFloat | None = None
    timestamps: str | None = None
    key: str | None = None
    onset_s: float = 0.0

    @model_validator(mode="after")
    def _one_clock(self) -> ArrayFeatureSpec:
        if (self.rate_hz is None) == (self.timestamps is None):
            raise ValueError("say when each sample is: give rate_hz (samples per second, from onset_s) or "
                             "timestamps (an npz key or a column with each sample's time in seconds), not both")
        return self


class TextGridFeatureSpec(StrictModel):
    """Word timings from a Praat TextGrid (e.g. the Alice transcript) as word rate: the
    words (intervals of ``tier`` whose text is not in ``skip``) starting in each TR,
    per second. ``onset_s``: movie (audio) time at the TextGrid's time 0."""

    textgrid: str
    tier: str = "word"
    skip: list[str] = ["", "sp", "sil", "<sil>"]
    onset_s: float = 0.0


def _feature_kind(value) -> str:
    if isinstance(value, dict):
        kind = "table" if "table" in value else "textgrid" if "textgrid" in value else "array"
    else:
        kind = "table" if isinstance(value, TableFeatureSpec) else \
            "textgrid" if isinstance(value, TextGridFeatureSpec) else "array"
    return f"{kind}-feature"


FeatureSpec = Annotated[
    Annotated[TableFeatureSpec, Tag("table-feature")] | Annotated[ArrayFeatureSpec, Tag("array-feature")]
    | Annotated[TextGridFeatureSpec, Tag("textgrid-feature")],
    Discriminator(_feature_kind),
]
FEATURE_FILE_KEYS = ("table", "path", "textgrid")


class StimulusSpec(StrictModel):
    """The movie the subjects watched. ``onset_s``: movie time at which the fMRI run's
    first volume began. ``device``: where EnCodec and CLIP run (not part of any
    fingerprint: results agree to float rounding). ``features``: any other stimulus
    description the lab has (annotation columns, precomputed arrays, TextGrid word
    rate), by name; together they are the ``features`` modality."""

    video: VideoSpec | None = None
    audio: AudioSpec | None = None
    text: TextSpec | None = None
    features: dict[Annotated[str, Field(pattern=SUBJECT_ID)], FeatureSpec] = Field(default_factory=dict)
    hrf: HrfSpec = HrfSpec()
    onset_s: float = 0.0
    device: Literal["auto", "cpu", "cuda"] = "auto"


# ------------------------------------------------------------- model and training
ATTENTION_HEADS = 4  # temporal: transformer (models.temporal.CausalAttention's default)


class ModelSpec(StrictModel):
    """The autoencoder. Per-TR encoders read each TR's stimulus (no HRF: the model learns
    the lags); a temporal module maps the encoded history to the bottleneck of every TR.

    ``bottleneck: voxels`` (default): the middle layer is the brain, one unit per voxel,
    trained to match the fMRI; the decoders read only it, each through a projection
    voxels -> ``rank`` units (default 256). An integer: a latent of that width with an
    fMRI head on the side (the original layout); ``rank`` then factorizes the head (full
    when left out).

    ``temporal``: ``lags`` (default), a learned causal filter over ``context_s`` seconds
    of encoded stimulus, per channel pair a mix of ``lag_basis`` (default 6) lag profiles initialised
    from the canonical HRF and earlier and later copies of it; with the projection to
    voxels after it, each voxel learns its own lags (linear: the ridge reference's FIR
    delays are a special case). ``transformer``: attention over the same context, with a
    learned bias per lag (nonlinear; slower in silico). ``context_s``: how far back a TR
    reads, at least the HRF's ~20 s. ``code_rank``: the width of the per-TR code the
    temporal module reads, the voxel layer's only source (default: ``rank``; with a
    latent, default its width, and a narrower code is widened to the latent after the
    temporal module); a small code keeps a model trained on few TRs from fitting noise.

    ``head_rank``: in ``per_subject`` mode the bottleneck is the shared average brain,
    and each subject's head maps it to that subject's fMRI: a scale and an offset per
    voxel, plus a residual of this rank from the temporal features (0: none)."""

    bottleneck: PositiveInt | Literal["voxels"] = "voxels"
    rank: PositiveInt | None = None
    hidden: PositiveInt = 1024
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    temporal: Literal["lags", "transformer"] = "lags"
    context_s: Annotated[float, Field(ge=1.0, le=120.0)] = 21.0
    lag_basis: Annotated[int, Field(ge=1, le=32)] | None = None  # None: 6 (temporal: lags)
    head_rank: NonNegativeInt = 0
    code_rank: PositiveInt | None = None

    @model_validator(mode="after")
    def _keys_the_layout_reads(self) -> ModelSpec:
        """A key the chosen layout would never read is a mistake, not a no-op."""
        if self.temporal == "transformer" and self.lag_basis is not None:
            raise ValueError("model.lag_basis is read by temporal: lags only (attention has no lag basis); "
                             "accepted: leave lag_basis out, or temporal: lags")
        if self.temporal == "transformer":
            width = self.code_rank or ((self.rank or 256) if self.bottleneck == "voxels" else self.bottleneck)
            if width % ATTENTION_HEADS:
                raise ValueError(f"temporal: transformer attends with {ATTENTION_HEADS} heads, so its width "
                                 f"({width}: model.{'code_rank' if self.code_rank else 'rank' if self.bottleneck == 'voxels' else 'bottleneck'})"
                                 f" must divide by {ATTENTION_HEADS}; accepted: e.g. {width + ATTENTION_HEADS - width % ATTENTION_HEADS}")
        return self


class LossSpec(StrictModel):
    """``variance``: each feature's squared error over that feature's training variance
    (1 = predicting every feature's training mean; codes: cross-entropy over each
    codebook's marginal entropy); ``std``: the lab's shipped formula, squared error over
    the batch target's std, raw units; ``none``: raw error."""

    normalize: Literal["variance", "std", "none"] = "variance"
    weights: dict[Modality, NonNegativeFloat] = Field(
        default_factory=lambda: {"video": 1.0, "audio": 1.0, "text": 1.0, "fmri": 1.0}
    )


class TrainSpec(StrictModel):
    """``window_trs``: a sample is a window of that many contiguous TRs of one run, the
    first ``context - 1`` of which (``model.context_s``) are read as stimulus history
    only; every training TR is a target of exactly one window per epoch (default: 64, or
    twice the context if that is longer). ``batch_size``: windows
    per step and rank. ``early_stop_patience``: epochs without a better validation r
    before training stops (the checkpoint kept is always the best one). ``seeds``: one
    model per seed, trained one after another on the same caches; the evaluation and the
    in-silico prediction average their fMRI predictions (the ensemble) and report the
    spread across seeds; the first seed's model is the one the verification, the lesions
    and the timing test read. None: one model, seeded by the spec's ``seed``."""

    epochs: PositiveInt = 50
    batch_size: PositiveInt = 2
    window_trs: Annotated[int, Field(ge=2, le=4096)] | None = None  # None: max(64, twice the context)
    lr: PositiveFloat = 1.0e-3
    weight_decay: NonNegativeFloat = 1.0e-5
    warmup_epochs: NonNegativeInt | None = None  # None: min(10, epochs)
    grad_clip: PositiveFloat | None = 1.0
    precision: Literal["bf16", "fp32"] = "bf16"
    devices: PositiveInt | Literal["auto"] = "auto"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    checkpoint_every: PositiveInt = 10
    early_stop_patience: PositiveInt | None = None
    seeds: Annotated[list[NonNegativeInt], Field(min_length=1, max_length=100)] | None = None
    # How long a rank waits for the others in a collective (and at start-up) before the
    # job fails, naming the rank: a rank that hangs or dies ends the job within this.
    # Not part of the training fingerprint: it never changes the result.
    collective_timeout_s: Annotated[int, Field(ge=5, le=86_400)] = 600

    @property
    def warmup(self) -> int:
        """Warmup epochs: as given, else 10 (fewer when training is shorter)."""
        return min(10, self.epochs) if self.warmup_epochs is None else self.warmup_epochs

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            _unique_ids([str(v) for v in value], "train.seeds")
        return value

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> TrainSpec:
        if self.warmup_epochs is not None and self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs}); "
                "accepted: warmup_epochs <= epochs"
            )
        return self


class VerifySpec(StrictModel):
    """The verification's settings: the loss must drop by ``min_loss_drop`` within
    ``drop_within_epochs``; the stimulus check shifts the stimulus by at least
    ``min_shift_trs`` TRs; ``strict`` fails the run on any failing check."""

    min_loss_drop: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    drop_within_epochs: PositiveInt = 3
    min_shift_trs: PositiveInt = 5
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
# ------------------------------------------------------------------ evaluation
class RidgeSpec(StrictModel):
    """The reference encoding model: banded ridge (himalaya), one band per modality.

    Features enter as the model sees them (HRF-aligned), each lagged by every delay of a
    set (FIR, in TRs); the set and the band weights and alphas are chosen on val TRs.
    ``backend``: himalaya's backend; ``auto`` is ``torch_cuda`` when a GPU is visible,
    else ``numpy`` (not part of any fingerprint: results agree to float32 rounding).
    """

    delay_sets: Annotated[list[list[NonNegativeInt]], Field(min_length=1)] = [[0], [0, 1, 2]]
    alphas: Annotated[list[PositiveFloat], Field(min_length=1)] = [10.0 ** k for k in range(-3, 7)]
    n_iter: PositiveInt = 20
    backend: Literal["auto", "numpy", "torch_cuda"] = "auto"

    @field_validator("delay_sets")
    @classmethod
    def _non_empty_sets(cls, value: list[list[int]]) -> list[list[int]]:
        if any(not delays for delays in value):
            raise ValueError("every delay set needs at least one delay, e.g. [[0], [0, 1, 2]]")
        return [sorted(set(delays)) for delays in value]


class EvaluateSpec(StrictModel):
    """Held-out evaluation.

    ``null``: each voxel's own null distribution of r, from ``null_draws`` surrogates of
    the prediction that keep that voxel's autocorrelation: ``phase`` randomization
    (continuous values, so p can reach ``1 / (null_draws + 1)`` whatever the test length)
    or circular ``shift``s (at most ``n_test - 2 min_shift_trs + 1`` distinct values).
    ``min_shift_trs``: the shortest circular shift, wherever one is used (inter-subject
    reliability, the stimulus check). Voxels are significant at false-discovery rate
    ``fdr`` (Benjamini-Hochberg). ``block_s``: the shortest block of test TRs (s) that the
    autoencoder-vs-ridge interval leaves out at a time (at least 15 s, longer than the
    BOLD autocorrelation).
    """

    null: Literal["phase", "shift"] = "phase"
    null_draws: Annotated[int, Field(ge=19, le=100_000)] = 1000
    min_shift_trs: PositiveInt = 5
    block_s: Annotated[float, Field(ge=15.0)] = 20.0
    fdr: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    ridge: RidgeSpec = RidgeSpec()


class RegionSpec(StrictModel):
    """A brain region: a NIfTI mask (nonzero voxels) or labels of a NIfTI atlas."""

    mask: str | None = None
    atlas: str | None = None
    labels: list[int] = []

    @model_validator(mode="after")
    def _one_source(self) -> RegionSpec:
        if (self.mask is None) == (self.atlas is None):
            raise ValueError("give exactly one of 'mask' (a NIfTI mask) or 'atlas' with 'labels'")
        if self.atlas is not None and not self.labels:
            raise ValueError("'atlas' needs 'labels': the atlas values that make up the region, e.g. [1]")
        if self.mask is not None and self.labels:
            raise ValueError("'labels' go with 'atlas', not with 'mask'")
        return self

    @property
    def file(self) -> str:
        return self.mask if self.mask is not None else self.atlas  # type: ignore[return-value]


class LesionSpec(StrictModel):
    """Silence regions of the voxel layer and decode the stimulus from what is left.

    ``source``: what fills the voxel layer on the test TRs: ``model`` (the layer the
    encoders compute from the test stimulus), ``brain`` (measured fMRI; with a latent
    bottleneck it reaches the latent through a ridge read-out fit on training TRs), or
    ``auto`` (``model`` with ``bottleneck: voxels``, else ``brain``).
    ``method``: ``zero`` sets the region to 0, the measured training mean in standardized
    units; ``mean`` to the layer's own mean over the training TRs; ``noise`` to Gaussian
    noise of unit variance (the power is kept, the information is not).
    Each region is compared with ``random_regions`` contiguous random regions of the same
    size that leave the region out: a permutation p per region and modality,
    Benjamini-Hochberg at ``fdr`` across all of them, and a ``bootstrap``-resample
    circular-block interval over test TRs for each effect.
    """

    regions: Annotated[dict[Annotated[str, Field(pattern=SUBJECT_ID)], RegionSpec], Field(min_length=1)]
    source: Literal["auto", "model", "brain"] = "auto"
    method: Literal["zero", "mean", "noise"] = "zero"
    random_regions: Annotated[int, Field(ge=19, le=100_000)] = 1000
    fdr: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    bootstrap: Annotated[int, Field(ge=100, le=100_000)] = 1000
    seed: NonNegativeInt = 0

    @property
    def region_files(self) -> dict[str, str]:
        """Region name -> its mask or atlas file."""
        return {name: region.file for name, region in self.regions.items()}


PredictModality = Literal["video", "audio", "text", "features"]


class PredictSpec(StrictModel):
    """In silico: the trained model's predicted response to a movie (``kedro run
    --pipelines=predict``).

    ``stimulus``: a movie file (its frames feed the video modality, its soundtrack the
    audio); left out, the training movie (``stimulus.video.path``, else
    ``stimulus.audio.path``). ``annotations``: a table with ``stimulus.text``'s start,
    end and columns for the text modality (left out: the training annotations when the
    movie is the training movie). ``onset_s``: movie seconds at the first predicted TR
    (and at the first volume of every ``fmri.heldout`` run, which is scored against the
    prediction: on the split's test TRs only when the movie is the training movie).
    ``ablate``: modalities replaced by their training mean (a modality the new movie
    cannot provide, such as ``features``, must be ablated). ``regions``: regions whose
    mean predicted time course is written (left out: the lesion section's regions).
    ``contrast``: two segments of the movie, ``[start_s, end_s]`` each, whose mean
    predicted responses are subtracted (``a - b``) into a map. ``permutations``: circular
    shifts of each modality (at least ``evaluate.min_shift_trs``) in the test of whether
    a voxel's held-out response follows that modality's timing (0: no test; a shift
    moves that modality's additive contribution to the prediction, no model pass).
    """

    stimulus: str | None = None
    annotations: str | None = None
    onset_s: NonNegativeFloat = 0.0
    ablate: list[PredictModality] = []
    permutations: Annotated[int, Field(ge=0, le=100_000)] = 199
    regions: dict[Annotated[str, Field(pattern=SUBJECT_ID)], RegionSpec] = {}
    contrast: dict[Literal["a", "b"], tuple[NonNegativeFloat, PositiveFloat]] | None = None

    @field_validator("ablate")
    @classmethod
    def _unique_ablations(cls, value: list[str]) -> list[str]:
        return _unique_ids(value, "predict.ablate")

    @field_validator("contrast")
    @classmethod
    def _two_segments(cls, value):
        if value is None:
            return value
        if set(value) != {"a", "b"}:
            raise ValueError("a contrast needs two segments, a and b, each [start_s, end_s], e.g. "
                             "{a: [0, 30], b: [30, 60]}")
        bad = [k for k, (start, end) in value.items() if end <= start]
        if bad:
            raise ValueError(f"contrast segment(s) {bad} end before they start; each is [start_s, end_s] with "
                             "end_s > start_s")
        return value

    @property
    def region_files(self) -> dict[str, str]:
        """Region name -> its mask or atlas file."""
        return {name: region.file for name, region in self.regions.items()}


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
    evaluate: EvaluateSpec = EvaluateSpec()
    lesion: LesionSpec | None = None
    predict: PredictSpec = PredictSpec()

    @model_validator(mode="after")
    def _demo_placeholder_needs_demo(self) -> ExperimentSpec:
        if self.demo is not None:
            if self.fmri.bids is not None:
                raise ValueError("a 'demo' spec generates its own runs; it cannot also read fmri.bids")
            fmri_paths = {**self.fmri.run_files, **{f"heldout {k}": v for k, v in self.fmri.heldout.items()}}
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

    @model_validator(mode="after")
    def _window_holds_a_target(self) -> ExperimentSpec:
        if self.train.window_trs is None or not self.fmri.tr:  # the TR from the headers: checked by the job
            return self
        lags = math.ceil(self.model.context_s / self.fmri.tr - 1e-9)
        if self.train.window_trs < lags:
            raise ValueError(
                f"train.window_trs ({self.train.window_trs}) leaves no target TR after the "
                f"{lags - 1} TRs of context (model.context_s = {self.model.context_s} s at TR {self.fmri.tr} s); "
                f"accepted: window_trs >= {lags}, e.g. {max(64, 2 * lags)}, or leave it out"
            )
        return self

    @model_validator(mode="after")
    def _heads_need_subjects(self) -> ExperimentSpec:
        if self.model.head_rank and self.fmri.mode != "per_subject":
            raise ValueError(f"model.head_rank ({self.model.head_rank}) sizes each subject's head, which only "
                             f"fmri.mode: per_subject has (this spec: {self.fmri.mode}, one average brain); "
                             "accepted: head_rank: 0, or mode: per_subject")
        return self

    @model_validator(mode="after")
    def _lesion_source(self) -> ExperimentSpec:
        if self.lesion is not None and self.lesion.source == "model" and self.model.bottleneck != "voxels":
            raise ValueError(
                f"lesion.source: model silences the model's voxel layer, but model.bottleneck is "
                f"{self.model.bottleneck} (a latent, no voxel layer); use bottleneck: voxels, or lesion.source: "
                "brain (measured fMRI through a ridge read-out into the latent)"
            )
        return self

    @model_validator(mode="after")
    def _run_onsets(self) -> ExperimentSpec:
        given = {run: s.onset_s for run, s in self.fmri.runs.items() if s.onset_s is not None}
        if given and self.stimulus is not None and self.stimulus.onset_s != 0:
            raise ValueError(
                "the movie onset is given twice: stimulus.onset_s and fmri.runs[...].onset_s; "
                "with runs, give each run's onset in fmri.runs and leave stimulus.onset_s out"
            )
        runs = self.fmri.run_ids
        if self.stimulus is not None and len(runs) > 1:
            missing = [run for run in runs if run not in given]
            if missing:
                raise ValueError(
                    f"with several runs each needs its movie onset: give fmri.runs[run].onset_s "
                    f"(seconds of movie at the run's first volume) for runs {missing}"
                )
        return self

    def run_onsets(self) -> dict[str, float]:
        """Run id -> movie seconds at the run's first volume (file TR 0)."""
        return run_onsets(self.fmri, self.stimulus)

    def input_files(self) -> dict[str, str]:
        """Every file the spec reads, keyed by its spec key path (e.g. ``fmri.subjects['01']['1']``)."""
        files = {self.fmri.file_label(sid, run): p
                 for sid, runs in self.fmri.subject_files().items() for run, p in runs.items()}
        files |= {f"fmri.heldout[{sid!r}]": p for sid, p in self.fmri.heldout.items()}
        files |= {f"fmri.{key}": p for key, p in self.fmri.mask_files.items()}
        files |= {self.fmri.file_label(sid, run, "fmri.clean.confounds.files"): p
                  for sid, runs in self.fmri.confound_table_files().items() for run, p in runs.items()}
        files |= {f"fmri.clean.confounds.heldout[{sid!r}]": p for sid, p in self.fmri.heldout_confound_files.items()}
        if self.stimulus is not None:
            for section, keys in STIMULUS_FILE_FIELDS.items():
                part = getattr(self.stimulus, section)
                for key in keys if part is not None else ():
                    if getattr(part, key) and getattr(part, key) != "random":
                        files[f"stimulus.{section}.{key}"] = getattr(part, key)
            for name, feature in self.stimulus.features.items():
                key = next(k for k in FEATURE_FILE_KEYS if hasattr(feature, k))
                files[f"stimulus.features.{name}.{key}"] = getattr(feature, key)
        if self.lesion is not None:
            files |= {f"lesion.regions.{name}.{'mask' if region.mask else 'atlas'}": region.file
                      for name, region in self.lesion.regions.items()}
        for key in ("stimulus", "annotations"):
            if getattr(self.predict, key):
                files[f"predict.{key}"] = getattr(self.predict, key)
        files |= {f"predict.regions.{name}.{'mask' if region.mask else 'atlas'}": region.file
                  for name, region in self.predict.regions.items()}
        return files


def run_onsets(fmri: FmriSpec, stimulus: StimulusSpec | None) -> dict[str, float]:
    """Run id -> movie seconds at the run's first volume (file TR 0): ``fmri.runs[run].onset_s``,
    else ``stimulus.onset_s`` (one run), else 0."""
    default = stimulus.onset_s if stimulus is not None else 0.0
    given = {run: s.onset_s for run, s in fmri.runs.items() if s.onset_s is not None}
    return {run: given.get(run, default) for run in fmri.run_ids}


class TrainingSettings(StrictModel):
    """What the training job node reads (one typed parameter): the spec's model, loss and
    train sections, its seed and name, and the folder the ranks write to."""

    model: ModelSpec
    loss: LossSpec
    train: TrainSpec
    seed: NonNegativeInt
    experiment: str
    run_dir: str

    @property
    def seeds(self) -> list[int]:
        """The training seeds: ``train.seeds``, else the spec's ``seed`` alone."""
        return list(self.train.seeds) if self.train.seeds else [self.seed]

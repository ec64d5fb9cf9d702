"""The training job: everything a rank, the verification and the evaluation need, as
plain data (file paths, rows, shapes, spec sections), never arrays.

A job is built once from the cached fMRI tensor, split, loss statistics and stimulus
features (:func:`build_job`) and saved as ``train_job`` (JSON). Ranks, the verification,
the evaluation and the lesions memory-map the caches through its paths, so later stages
take one input instead of every cache and spec section again. Where the job runs (world
size, backend, device) is resolved when it is launched, on the machine that runs it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from giblet_kedro.errors import SpecError
from giblet_kedro.models.autoencoder import ModalityShapes, model_context
from giblet_kedro.training.losses import ModalityStats, code_stats, continuous_stats, stats_from_arrays

if TYPE_CHECKING:
    import pandas as pd

MODALITIES = ("video", "audio", "text", "features")


@dataclass(frozen=True)
class ArrayPaths:
    """Paths of the caches: the fMRI tensor, each present modality's values/valid, and
    the loss statistics (npz)."""

    fmri: str
    values: dict[str, str] = field(default_factory=dict)  # modality -> values.npy
    valid: dict[str, str] = field(default_factory=dict)  # modality -> valid.npy
    loss_stats: str = ""
    # (n_subjects, n_trs) bool, False at censored volumes (``fmri_train_valid``); "": none.
    fmri_valid: str = ""
    # The model's inputs where they are not ``values`` (each TR's features as extracted,
    # before the HRF step): modality -> values.npy / valid.npy. Empty: the model reads ``values``.
    model_inputs: dict[str, str] = field(default_factory=dict)
    model_inputs_valid: dict[str, str] = field(default_factory=dict)


def fmri_sample_validity(covered: np.ndarray | None, mode: str, subjects: np.ndarray, trs: np.ndarray) -> np.ndarray:
    """(n,) bool: does sample (subject, TR) have an uncensored fMRI volume? ``cross_subject``
    (one sample per TR, the subjects' average): at least one subject uncensored.
    ``covered``: (n_subjects, n_trs) bool, or None (nothing censored)."""
    if covered is None:
        return np.ones(len(trs), dtype=bool)
    if mode == "per_subject":
        return np.asarray(covered[subjects, trs], dtype=bool)
    return np.asarray(covered[:, trs].any(axis=0), dtype=bool)


@dataclass
class TrainJob:
    """Everything a rank needs, as plain data (pickled to spawned processes, or JSON).

    ``world_size``, ``backend`` and ``device_type`` are None until the job is launched
    (:func:`resolve_devices`), so a job file written on a login node does not carry the
    login node's device.
    """

    paths: ArrayPaths
    train_rows: list[int]
    val_rows: list[int]
    mode: str
    shapes: ModalityShapes
    model: dict
    loss: dict
    train: dict
    seed: int
    run_dir: str
    experiment: str = ""
    tr: float = 0.0
    test_rows: list[int] = field(default_factory=list)  # never read by training; the evaluation's rows
    # What each modality's features were extracted with (e.g. "RANDOM weights: ..."), for the reports.
    feature_weights: dict[str, str] = field(default_factory=dict)
    # The ``features`` modality's column names (``<feature>:<column>``), in order.
    feature_columns: list[str] = field(default_factory=list)
    # First row of each run in the tensor (a window's context never crosses one).
    run_starts: list[int] = field(default_factory=lambda: [0])
    # Subjects with a head of their own (``per_subject``); 0: none.
    n_subjects: int = 0
    world_size: int | None = None
    backend: str | None = None
    device_type: str | None = None
    init_method: str | None = None
    # Tests of failure handling only: [rank, epoch] raises in that epoch; a third item
    # "hang" or "kill" makes the rank hang forever or SIGKILL itself instead, "preempt"
    # requests a stop (training.preemption) after the epoch's second step.
    crash_at: list | None = field(default=None)
    # Tests of the gradient arithmetic only: {"nonzero_init": std} adds seeded noise of
    # that std to every parameter (the zero-initialized output layers included), and
    # {"gradients": true} saves step 1's gradients after DDP's averaging from rank 0.
    probe: dict | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainJob:
        raw = dict(raw)
        raw["paths"] = ArrayPaths(**raw["paths"])
        raw["shapes"] = ModalityShapes(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["shapes"].items()})
        return cls(**raw)

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        return cls.from_dict(json.loads(text))

    @cached_property
    def stats(self) -> dict[str, ModalityStats]:
        """The loss statistics of the fMRI and every present modality (read once)."""
        with np.load(self.paths.loss_stats, allow_pickle=False) as archive:
            return stats_from_arrays({key: archive[key] for key in archive.files})

    @property
    def modalities(self) -> list[str]:
        return self.shapes.present()

    @property
    def seeds(self) -> list[int]:
        """Every model's seed, this job's first: ``train.seeds`` (one model: ``[seed]``)."""
        return [self.seed, *(int(s) for s in self.train.get("seeds") or [] if int(s) != self.seed)]

    @property
    def n_lags(self) -> int:
        """TRs each bottleneck TR reads: ``model.context_s`` at the job's TR."""
        if self.tr <= 0:
            raise ValueError("the job has no TR (tr); the temporal module's context is in seconds")
        return model_context(self.model, self.tr)

    @property
    def window_trs(self) -> int:
        """TRs per training window: ``train.window_trs``, else 64 or twice the context."""
        return int(self.train.get("window_trs") or max(64, 2 * self.n_lags))

    def __getstate__(self):  # the cached stats are re-read by each process
        state = dict(self.__dict__)
        state.pop("stats", None)
        return state


def present_modalities(modalities: dict) -> dict:
    """The modalities the spec has (absent ones are empty caches), by name, in
    ``MODALITIES`` order."""
    return {name: modalities[name] for name in MODALITIES
            if name in modalities and not modalities[name].meta.get("absent") and modalities[name].values.size}


def split_rows(split: pd.DataFrame, which: str) -> np.ndarray:
    """(n,) int64 rows of the fMRI tensor in the ``which`` part ("train", "val", "test")."""
    return split.loc[split["split"] == which, "tr"].to_numpy(dtype=np.int64)


def audio_is_codes(audio) -> bool:
    """EnCodec codes (integers) rather than a mel spectrogram."""
    return np.issubdtype(np.asarray(audio.values[:1]).dtype, np.integer)


def pool_axes(name: str) -> tuple[int, ...]:
    """Axes of one sample that repeat the same features: the frames of a TR (video, axis
    0 of (F, 3, H, W)), the frames within a TR (mel, axis 1 of (n_mels, T))."""
    return {"video": (0,), "audio": (1,)}.get(name, ())


def compute_loss_stats(fmri_train: np.ndarray, train_rows: np.ndarray, features: dict,
                       covered: np.ndarray | None = None, inputs: dict | None = None) -> dict[str, ModalityStats]:
    """Per-feature statistics over the training TRs (valid TRs only): every voxel's mean
    and std (over subjects too in ``per_subject``), every pixel's, embedding dimension's
    and mel band's; each codebook's marginal for codes.

    ``covered``: (n_subjects, n_trs) bool, False at censored volumes (``fmri_train_valid``);
    in ``per_subject`` a censored (subject, TR) sample counts for nothing, fMRI or stimulus."""
    train_rows = np.asarray(train_rows, dtype=np.int64)
    if fmri_train.ndim == 3 and covered is not None and not covered[:, train_rows].all():
        stats = {"fmri": _masked_subject_stats(fmri_train, train_rows, covered)}
    elif fmri_train.ndim == 3:  # (S, n_trs, V): a voxel's samples are every subject's TRs
        fmri = continuous_stats(np.swapaxes(fmri_train, 0, 1), train_rows, pool_axes=(0,))
        stats = {"fmri": ModalityStats(mean=fmri.mean.reshape(-1), std=fmri.std.reshape(-1))}
    else:
        stats = {"fmri": continuous_stats(fmri_train, train_rows)}
    if covered is not None:  # stimulus rows with at least one uncensored sample
        train_rows = train_rows[covered[:, train_rows].any(axis=0)]
    for name, aligned in features.items():
        rows = train_rows[np.asarray(aligned.valid)[train_rows]]
        stats[name] = (code_stats(aligned.values, rows) if name == "audio" and audio_is_codes(aligned)
                       else continuous_stats(aligned.values, rows, pool_axes(name)))
    for name, aligned in (inputs or {}).items():  # the model's inputs, where they are not the targets
        if name in features and not (name == "audio" and audio_is_codes(aligned)):
            rows = train_rows[np.asarray(aligned.valid)[train_rows]]
            stats[f"input_{name}"] = continuous_stats(aligned.values, rows, pool_axes(name))
    return stats


def _masked_subject_stats(fmri_train: np.ndarray, rows: np.ndarray, covered: np.ndarray) -> ModalityStats:
    """Every voxel's mean and std (ddof 0) over the uncensored (subject, training TR)
    samples of a (S, n_trs, V) tensor, one subject at a time."""
    from giblet_kedro.fmri.moments import RunningMoments

    moments = RunningMoments(fmri_train.shape[-1])
    for subject in range(fmri_train.shape[0]):
        kept = rows[covered[subject, rows]]
        for start in range(0, len(kept), 256):
            moments.update(np.asarray(fmri_train[subject, kept[start:start + 256]], dtype=np.float64))
    return ModalityStats(mean=moments.mean, std=np.sqrt(np.maximum(moments.m2 / moments.count, 0.0)))


def job_rows(split: pd.DataFrame, covered: np.ndarray | None) -> dict[str, np.ndarray]:
    """The train, val and test rows a job uses: the split's, less the TRs censored in every
    subject (train) or in any subject (val, test: scored with every subject), see
    :mod:`giblet_kedro.fmri.censor`."""
    from giblet_kedro.fmri.censor import usable_rows

    if covered is None or covered.all():
        return {which: split_rows(split, which) for which in ("train", "val", "test")}
    rows = {which: usable_rows(split, covered, which) for which in ("train", "val", "test")}
    if rows["train"].size < 3:
        raise ValueError(f"censoring leaves {rows['train'].size} training TRs; at least 3 are needed")
    for which in ("val", "test"):
        if split_rows(split, which).size and not rows[which].size:
            raise ValueError(f"every {which} TR is censored in at least one subject; relax the confound strategy "
                             "(fmri.clean.confounds.strategy_options) or leave the most censored subject out")
    return rows


def run_starts(split: pd.DataFrame) -> list[int]:
    """The tensor row at which each run of the split table starts."""
    runs = split["run"].astype(str).to_numpy()
    return np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]]).tolist()


def build_job(fmri_train: np.ndarray, split: pd.DataFrame, loss_stats_file: str, features: dict,
              model: dict, loss: dict, train: dict, seed: int, run_dir: str, experiment: str = "",
              fmri_valid: np.ndarray | None = None, inputs: dict | None = None) -> TrainJob:
    """The job of a spec: cache paths (the memmaps' files), rows, shapes and settings.

    ``features``: the present modalities' TR-aligned caches (memory-mapped), by name: the
    decoders' targets and the ridge's features (HRF-aligned). ``inputs``: the model's
    inputs where they differ (each TR's features before the HRF step), by name.
    ``fmri_valid``: the memory-mapped ``fmri_train_valid`` (censored volumes), or None.
    """
    if not features:
        raise SpecError("training needs at least one stimulus modality: add stimulus.video, stimulus.audio, "
                         "stimulus.text or stimulus.features to the spec (the fMRI stage alone runs with "
                         "--pipelines=fmri)")
    audio = features.get("audio")
    shapes = ModalityShapes(
        video=tuple(features["video"].values.shape[1:]) if "video" in features else None,
        audio=tuple(audio.values.shape[1:]) if audio is not None else None,
        audio_is_codes=audio is not None and audio_is_codes(audio),
        text=tuple(features["text"].values.shape[1:]) if "text" in features else None,
        features=tuple(features["features"].values.shape[1:]) if "features" in features else None,
        n_voxels=int(fmri_train.shape[-1]))
    paths = ArrayPaths(fmri=str(fmri_train.filename),
                       values={n: str(a.values.filename) for n, a in features.items()},
                       valid={n: str(Path(a.values.filename).with_name("valid.npy")) for n, a in features.items()},
                       loss_stats=str(loss_stats_file),
                       fmri_valid=str(fmri_valid.filename) if fmri_valid is not None else "",
                       model_inputs={n: str(a.values.filename) for n, a in (inputs or {}).items() if n in features},
                       model_inputs_valid={n: str(Path(a.values.filename).with_name("valid.npy"))
                                           for n, a in (inputs or {}).items() if n in features})
    rows = job_rows(split, None if fmri_valid is None else np.asarray(fmri_valid))
    weights = {name: float(loss["weights"].get(name, 1.0)) for name in ("fmri", *features)}
    tr = next(iter(features.values())).meta.get("grid", {}).get("tr", 0.0)
    return TrainJob(paths=paths, train_rows=rows["train"].tolist(), val_rows=rows["val"].tolist(),
                    mode="per_subject" if fmri_train.ndim == 3 else "cross_subject", shapes=shapes,
                    model=dict(model), loss={"normalize": loss["normalize"], "weights": weights}, train=dict(train),
                    seed=int(seed), run_dir=str(run_dir), experiment=experiment, tr=float(tr or 0.0),
                    test_rows=rows["test"].tolist(),
                    feature_weights={n: str(a.meta["weights"]) for n, a in features.items() if a.meta.get("weights")},
                    run_starts=run_starts(split), n_subjects=int(fmri_train.shape[0]) if fmri_train.ndim == 3 else 0,
                    feature_columns=list(features["features"].meta.get("columns", [])) if "features" in features else [])


def resolve_devices(train: dict) -> tuple[int, str, str]:
    """(world size, backend, device type) from ``train.devices`` / ``train.backend``, on
    the machine that runs the job."""
    import torch

    cuda = torch.cuda.is_available()
    if train["devices"] == "auto":
        world = torch.cuda.device_count() if cuda else 1
    else:
        world = int(train["devices"])
        if cuda and world > torch.cuda.device_count():
            raise SpecError(f"train.devices = {world} but only {torch.cuda.device_count()} GPUs are visible")
    backend = train["backend"] if train["backend"] != "auto" else ("nccl" if cuda else "gloo")
    if backend == "nccl" and not cuda:
        raise SpecError("train.backend is 'nccl' but no GPU is visible; use 'auto' or 'gloo'")
    return world, backend, "cuda" if cuda else "cpu"

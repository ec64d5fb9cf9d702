"""Training nodes: loss statistics -> DDP training (verification: ``verify.py``).

The training node hands workers file paths (the catalog's memory-mapped caches), never
arrays; rank 0 writes checkpoints into the stage's fingerprinted folder, so a rerun of
the same spec resumes from ``last.pt`` instead of starting over.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from giblet_kedro.errors import SpecError
from giblet_kedro.models.autoencoder import ModalityShapes
from giblet_kedro.spec.schema import LossSpec, ModelSpec, TrainSpec
from giblet_kedro.stimulus.aligned import TrAligned
from giblet_kedro.training.data import ArrayPaths
from giblet_kedro.training.ddp import TrainJob, launch, load_checkpoint
from giblet_kedro.training.losses import code_stats, continuous_stats

log = logging.getLogger(__name__)


def present_modalities(video: TrAligned, audio: TrAligned, text: TrAligned) -> dict[str, TrAligned]:
    """The modalities the spec has (absent ones are empty caches), by name."""
    return {name: a for name, a in (("video", video), ("audio", audio), ("text", text))
            if not a.meta.get("absent") and a.values.size}


def split_rows(split: pd.DataFrame, which: str) -> np.ndarray:
    """(n,) int64 rows of the fMRI tensor in the ``which`` part ("train", "val", "test")."""
    return split.loc[split["split"] == which, "tr"].to_numpy(dtype=np.int64)


def _audio_is_codes(audio: TrAligned) -> bool:
    return np.issubdtype(np.asarray(audio.values[:1]).dtype, np.integer)


def compute_loss_stats(fmri_train: np.ndarray, fmri_split: pd.DataFrame, video: TrAligned, audio: TrAligned,
                       text: TrAligned) -> dict[str, dict]:
    """Per-modality statistics over the training TRs (valid TRs only), saved for reuse:
    mean/std of all values, or the marginal entropy of EnCodec codes."""
    train = split_rows(fmri_split, "train")
    by_tr = fmri_train if fmri_train.ndim == 2 else np.swapaxes(fmri_train, 0, 1)  # (n_trs, ...) view
    stats = {"fmri": continuous_stats(by_tr, train)}
    for name, aligned in present_modalities(video, audio, text).items():
        rows = train[np.asarray(aligned.valid)[train]]
        stats[name] = (code_stats(aligned.values, rows) if name == "audio" and _audio_is_codes(aligned)
                       else continuous_stats(aligned.values, rows))
    return {name: value.to_dict() for name, value in stats.items()}


def _devices(train: TrainSpec) -> tuple[int, str, str]:
    """(world size, backend, device type) from ``train.devices`` / ``train.backend``."""
    cuda = torch.cuda.is_available()
    if train.devices == "auto":
        world = torch.cuda.device_count() if cuda else 1
    else:
        world = int(train.devices)
        if cuda and world > torch.cuda.device_count():
            raise SpecError(f"train.devices = {world} but only {torch.cuda.device_count()} GPUs are visible")
    backend = train.backend if train.backend != "auto" else ("nccl" if cuda else "gloo")
    if backend == "nccl" and not cuda:
        raise SpecError("train.backend is 'nccl' but no GPU is visible; use 'auto' or 'gloo'")
    return world, backend, "cuda" if cuda else "cpu"


def build_job(fmri_train: np.ndarray, fmri_split: pd.DataFrame, loss_stats: dict, video: TrAligned,
              audio: TrAligned, text: TrAligned, model: ModelSpec, loss: LossSpec, train: TrainSpec,
              seed: int, run_dir: str) -> TrainJob:
    present = present_modalities(video, audio, text)
    if not present:
        raise SpecError("training needs at least one stimulus modality: add stimulus.video, stimulus.audio or "
                        "stimulus.text to the spec (the fMRI stage alone runs with --pipelines=fmri)")
    mode = "per_subject" if fmri_train.ndim == 3 else "cross_subject"
    world, backend, device_type = _devices(train)
    shapes = ModalityShapes(
        video=tuple(video.values.shape[1:]) if "video" in present else None,
        audio=tuple(audio.values.shape[1:]) if "audio" in present else None,
        audio_is_codes="audio" in present and _audio_is_codes(audio),
        text=tuple(text.values.shape[1:]) if "text" in present else None,
        n_voxels=int(fmri_train.shape[-1]))
    paths = ArrayPaths(fmri=str(fmri_train.filename),
                       values={n: str(a.values.filename) for n, a in present.items()},
                       valid={n: str(Path(a.values.filename).with_name("valid.npy")) for n, a in present.items()})
    weights = {name: float(loss.weights.get(name, 1.0)) for name in ("fmri", *present)}
    return TrainJob(paths=paths, train_rows=split_rows(fmri_split, "train").tolist(), val_rows=split_rows(fmri_split, "val").tolist(),
                    mode=mode, stats={k: v for k, v in loss_stats.items() if k in ("fmri", *present)}, shapes=shapes,
                    model=model.model_dump(mode="json"), loss={"normalize": loss.normalize, "weights": weights},
                    train=train.model_dump(mode="json"), seed=seed, run_dir=run_dir, world_size=world,
                    backend=backend, device_type=device_type)


def train_model(fmri_train: np.ndarray, fmri_split: pd.DataFrame, loss_stats: dict, video: TrAligned,
                audio: TrAligned, text: TrAligned, model: ModelSpec, loss: LossSpec, train: TrainSpec,
                experiment: dict[str, Any], run_dir: str, fresh: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Train with DDP; returns the final weights (state dict) and the training history.

    Resumes from ``run_dir/last.pt`` when a previous run of the same spec stopped early;
    ``fresh`` (``kedro run --recompute``) discards it and starts over.
    """
    job = build_job(fmri_train, fmri_split, loss_stats, video, audio, text, model, loss, train,
                    int(experiment["seed"]), run_dir)
    log.info("training on %d %s process(es) (%s), %d train / %d val TRs, mode %s", job.world_size,
             job.device_type, job.backend, len(job.train_rows), len(job.val_rows), job.mode)
    if fresh and (Path(run_dir) / "last.pt").exists():
        log.info("--recompute: discarding the checkpoints in %s", run_dir)
        for name in ("last.pt", "best.pt", "final.pt", "history.json"):
            (Path(run_dir) / name).unlink(missing_ok=True)
    (Path(run_dir) / "job.json").parent.mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "job.json").write_text(job.to_json())  # also the input of a torchrun launch
    history = launch(job)
    return load_checkpoint(Path(run_dir) / "final.pt"), history

"""Training nodes: loss statistics -> the training job -> DDP training -> verification.

Wiring only: the work is in :mod:`giblet_kedro.training`. The job hands workers file
paths (the catalog's memory-mapped caches), never arrays; rank 0 writes checkpoints into
the stage's fingerprinted folder, so a rerun of the same spec resumes from ``last.pt``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from giblet_kedro.errors import InputDataError, SpecError
from giblet_kedro.spec.schema import FmriSpec, TrainingSettings, VerifySpec
from giblet_kedro.stimulus.aligned import TrAligned
from giblet_kedro.training import verification
from giblet_kedro.training.ddp import launch, selected_weights
from giblet_kedro.training.job import (
    TrainJob,
    build_job,
    compute_loss_stats,
    job_rows,
    present_modalities,
)
from giblet_kedro.training.losses import stats_to_arrays
from giblet_kedro.training.seeds import seed_job, train_seeds

log = logging.getLogger(__name__)


def loss_statistics(fmri_train: np.ndarray, fmri_train_valid: np.ndarray, fmri_split: pd.DataFrame,
                    modalities: dict[str, TrAligned], inputs: dict[str, TrAligned]) -> dict[str, np.ndarray]:
    """Every feature's mean and std over the uncensored training TRs (codes: each
    codebook's marginal), of the targets and of the model's inputs."""
    try:
        rows = job_rows(fmri_split, np.asarray(fmri_train_valid))["train"]
    except ValueError as exc:
        raise InputDataError(str(exc)) from None
    stats = compute_loss_stats(fmri_train, rows, present_modalities(modalities), np.asarray(fmri_train_valid),
                               present_modalities(inputs))
    return stats_to_arrays(stats)


def training_job(fmri_train: np.ndarray, fmri_train_valid: np.ndarray, fmri_split: pd.DataFrame,
                 loss_stats: dict[str, np.ndarray], modalities: dict[str, TrAligned], inputs: dict[str, TrAligned],
                 training: TrainingSettings) -> dict[str, Any]:
    """The job every rank, the verification and the evaluation read (JSON)."""
    try:
        job = build_job(fmri_train, fmri_split, loss_stats.filename, present_modalities(modalities),
                        training.model.model_dump(mode="json"), training.loss.model_dump(mode="json"),
                        training.train.model_dump(mode="json"), training.seeds[0], training.run_dir, training.experiment,
                        fmri_train_valid, present_modalities(inputs))
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return job.to_dict()


def train_model(train_job: dict[str, Any], fresh: bool = False
                ) -> tuple[dict[str, torch.Tensor], dict, dict[str, dict[str, torch.Tensor]]]:
    """Train with DDP, one model per seed of ``train.seeds``; returns the first seed's
    selected weights (the epoch of the best validation fMRI r: ``history["selected"]``
    names it and why), its training history (``history["seeds"]``: every seed's
    selection) and the other seeds' selected weights, by seed.

    Each seed resumes from its ``last.pt`` when a previous run of the same spec stopped
    early; ``fresh`` (``kedro run --recompute``) discards them and starts over.
    """
    job = TrainJob.from_dict(train_job)
    log.info("training: %d train / %d val TRs, mode %s, seeds %s", len(job.train_rows), len(job.val_rows),
             job.mode, job.seeds)
    history = train_seeds(job, launch, fresh)
    others = {str(seed): selected_weights(Path(seed_job(job, seed).run_dir)) for seed in job.seeds[1:]}
    return selected_weights(Path(job.run_dir)), history, others


def verify_training(train_job: dict[str, Any], training_history: dict, model_checkpoint: dict,
                    fmri_norm_stats: dict[str, np.ndarray], fmri_split: pd.DataFrame, fmri: FmriSpec,
                    verify: VerifySpec) -> tuple[dict, str, Any]:
    """Every check the lab did by eye, each against a value computed independently of the
    code path it checks. Returns the report (JSON), a summary (Markdown), the loss curve."""
    job = TrainJob.from_dict(train_job)
    report = verification.verify(job, training_history, model_checkpoint, fmri_norm_stats, fmri_split, fmri, verify)
    summary = verification.summary(report)
    for line in summary.splitlines()[2:]:
        log.info(line)
    if verify.strict and not report["passed"]:
        failed = [c["check"] for c in report["checks"] if not c["pass"]]
        raise SpecError(f"verification failed (verify.strict): {failed}; see the verification report")
    return report, summary, verification.loss_curve(training_history)

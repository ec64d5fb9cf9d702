"""The verification report: every check the lab did by eye, as data.

Expected values are computed from the spec and the data; observed values come from the
training history and the trained model. A failing check carries its reason;
``verify.strict: true`` fails the run.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from giblet_kedro.errors import SpecError  # noqa: E402
from giblet_kedro.models.autoencoder import MultimodalAutoencoder  # noqa: E402
from giblet_kedro.pipelines.train.nodes import build_job  # noqa: E402
from giblet_kedro.spec.schema import LossSpec, ModelSpec, TrainSpec, VerifySpec  # noqa: E402
from giblet_kedro.stimulus.aligned import TrAligned  # noqa: E402
from giblet_kedro.training.data import TrDataset  # noqa: E402
from giblet_kedro.training.ddp import TrainJob  # noqa: E402
from giblet_kedro.training.losses import ModalityStats  # noqa: E402

log = logging.getLogger(__name__)
INITIAL_TOLERANCE = 0.1  # relative: the untrained model's losses are known in advance
BALANCE_FACTOR = 10.0  # largest / smallest initial weighted component


def expected_batches_per_epoch(n_samples: int, world_size: int, batch_size: int) -> int:
    """``DistributedSampler(drop_last=False)`` pads every rank to ceil(n / world) samples;
    the loader keeps the last partial batch."""
    return math.ceil(math.ceil(n_samples / world_size) / batch_size)


def _check(name: str, expected: Any, observed: Any, passed: bool, reason: str = "") -> dict:
    return {"check": name, "expected": expected, "observed": observed, "pass": bool(passed), "reason": reason}


def _val_fmri_r(weights: dict, job: TrainJob) -> tuple[float, float]:
    """Median over voxels of the correlation over val TRs between predicted and measured
    fMRI (per voxel over time, not across voxels within a TR), and the MSE ratio to
    predicting the training mean (the standardized 0)."""
    stats = {k: ModalityStats(**v) for k, v in job.stats.items()}
    dataset = TrDataset(job.paths, np.asarray(job.val_rows), job.mode, stats, job.shapes.audio_is_codes)
    model = MultimodalAutoencoder(job.shapes, job.model["bottleneck"], job.model["hidden"], 0.0)
    model.load_state_dict(weights)
    model.eval()
    predicted, measured = [], []
    with torch.no_grad():
        for start in range(0, len(dataset), 64):
            batch = dataset.__getitems__(list(range(start, min(start + 64, len(dataset)))))
            predicted.append(model({n: batch[n] for n in job.shapes.present()})["fmri"].numpy())
            measured.append(batch["fmri"].numpy())
    pred, true = np.concatenate(predicted), np.concatenate(measured)
    pc, tc = pred - pred.mean(0), true - true.mean(0)
    r = (pc * tc).sum(0) / np.sqrt((pc**2).sum(0) * (tc**2).sum(0) + 1e-12)
    return float(np.median(r)), float(((pred - true) ** 2).mean() / (true**2).mean())


def verify_training(history: dict, fmri_norm_stats: dict, fmri_split: pd.DataFrame, fmri_train: np.ndarray,
                    model_checkpoint: dict, loss_stats: dict, video: TrAligned, audio: TrAligned, text: TrAligned,
                    model: ModelSpec, loss: LossSpec, train: TrainSpec, verify: VerifySpec,
                    experiment: dict[str, Any], run_dir: str) -> tuple[dict, str, Any]:
    """Every check the lab did by eye, with expected values computed from spec and data.

    Returns the report (JSON), a readable summary (Markdown) and the loss-curve figure.
    """
    job = build_job(fmri_train, fmri_split, loss_stats, video, audio, text, model, loss, train,
                    int(experiment["seed"]), run_dir)
    n_train_trs = len(job.train_rows)
    n_subjects = fmri_train.shape[0] if fmri_train.ndim == 3 else 1
    expected_samples = n_train_trs * n_subjects
    expected_batches = expected_batches_per_epoch(expected_samples, history["world_size"], train.batch_size)
    checks = [
        _check("samples per epoch", expected_samples, history["train_samples"], history["train_samples"] == expected_samples,
               f"{job.mode}: {'subjects x ' if n_subjects > 1 else ''}train TRs = "
               f"{f'{n_subjects} x ' if n_subjects > 1 else ''}{n_train_trs}"),
        _check("batches per epoch", expected_batches, history["batches_per_epoch"],
               history["batches_per_epoch"] == expected_batches,
               f"ceil(ceil({expected_samples} samples / {history['world_size']} ranks) / batch {train.batch_size})"),
    ]
    initial = history.get("initial") or {}
    components = {k: v for k, v in initial.items() if k != "total"}
    if loss.normalize == "variance" and components:
        for name, value in components.items():
            expected, why = _expected_initial(name, job)
            low, high = expected * (1 - INITIAL_TOLERANCE), expected * (1 + INITIAL_TOLERANCE)
            checks.append(_check(f"initial {name} loss", f"{expected:.4f} (range [{low:.3f}, {high:.3f}])",
                                 round(value, 4), low <= value <= high, why))
        weighted = [job.loss["weights"][n] * v for n, v in components.items() if job.loss["weights"][n] > 0]
        ratio = max(weighted) / max(min(weighted), 1e-12)
        checks.append(_check("loss components balanced", f"largest/smallest <= {BALANCE_FACTOR:g}", round(ratio, 3),
                             ratio <= BALANCE_FACTOR, "weighted initial components"))
    epochs = history["epochs"]
    first = initial.get("total", epochs[0]["train"]["total"] if epochs else float("nan"))
    window = [e["train"]["total"] for e in epochs[: verify.drop_within_epochs]]
    drop = (first - min(window)) / first if window and first else 0.0
    checks.append(_check(f"loss falls within {verify.drop_within_epochs} epochs", f">= {verify.min_loss_drop:.0%}",
                         f"{drop:.1%}", drop >= verify.min_loss_drop, f"from {first:.4f} to {min(window or [first]):.4f}"))
    ids = [str(s) for s in np.atleast_1d(fmri_norm_stats["subject_ids"])]
    missing = [s for s in ids if f"subject_{s}_mean" not in fmri_norm_stats or f"subject_{s}_std" not in fmri_norm_stats]
    checks.append(_check("normalization stats saved for every subject", ids, [s for s in ids if s not in missing],
                         not missing, "fmri_norm_stats loaded from disk"))
    median_r, mse_ratio = _val_fmri_r(model_checkpoint, job)
    checks.append(_check("fMRI head beats predicting the mean on val TRs", "MSE ratio < 1 and median voxel r > 0",
                         {"mse_ratio": round(mse_ratio, 4), "median_r": round(median_r, 4)},
                         mse_ratio < 1.0 and median_r > 0.0, "per voxel over time, val TRs"))
    report = {"experiment": experiment["name"], "passed": all(c["pass"] for c in checks), "checks": checks,
              "world_size": history["world_size"], "device": history["device"], "precision": history["precision"],
              "epochs_run": len(epochs), "resumed_from_epoch": history.get("resumed_from_epoch")}
    summary = _summary(report)
    for line in summary.splitlines()[2:]:
        log.info(line)
    if verify.strict and not report["passed"]:
        failed = [c["check"] for c in checks if not c["pass"]]
        raise SpecError(f"verification failed (verify.strict): {failed}; see the verification report")
    return report, summary, _loss_curve(history, initial)


def _expected_initial(name: str, job: TrainJob) -> tuple[float, str]:
    """The untrained model predicts the training mean (standardized 0) for continuous
    modalities, and uniform logits (cross-entropy log 1024) for codes."""
    if name == "audio" and job.shapes.audio_is_codes:
        entropy = job.stats["audio"]["entropy"]
        return math.log(1024) / entropy, f"uniform logits: log(1024) / code entropy {entropy:.3f} nats"
    return 1.0, "predicting the training mean scores 1 in variance-normalized units"


def _summary(report: dict) -> str:
    lines = [f"# Verification: {report['experiment']}", "",
             f"{'PASS' if report['passed'] else 'FAIL'}: {sum(c['pass'] for c in report['checks'])} of "
             f"{len(report['checks'])} checks; {report['world_size']} {report['device']} rank(s), {report['precision']}", "",
             "| check | expected | observed | result | why |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c['check']} | {c['expected']} | {c['observed']} | {'pass' if c['pass'] else 'FAIL'} | {c['reason']} |"
              for c in report["checks"]]
    return "\n".join(lines) + "\n"


def _loss_curve(history: dict, initial: dict):
    figure, axis = plt.subplots(figsize=(7, 4))
    epochs = [e["epoch"] for e in history["epochs"]]
    for name in history["epochs"][0]["train"] if history["epochs"] else []:
        values = [e["train"][name] for e in history["epochs"]]
        axis.plot([0, *epochs], [initial.get(name, values[0]), *values], label=f"train {name}",
                  linewidth=2 if name == "total" else 1)
    if history["epochs"]:
        axis.plot(epochs, [e["val"]["total"] for e in history["epochs"]], "k--", label="val total")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss (normalized units)")
    axis.set_title("training loss per component")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure

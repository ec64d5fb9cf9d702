"""Per-modality normalized losses.

The lab meant to "scale the loss values by subtracting the mean and dividing by the
standard deviation of all of the values within each modality", so that every loss is in
standard-deviation units of its modality and pixels (0-255) or voxel units cannot
swamp the others. Statistics are computed once over the training TRs and saved
(``loss_stats``):

- continuous modalities (video, text, mel, fmri): one mean and std of all values.
  ``variance``: the model works in standardized units, so the loss is
  ``mean((prediction - x)^2) / var(x)``; predicting the training mean scores 1.
  ``std``: the lab's shipped formula, ``mean((prediction - x)^2) / std(x in batch)`` in
  raw units, for comparison with old runs. ``none``: raw squared error.
- EnCodec codes: cross-entropy, divided (``variance`` and ``std``) by the entropy of
  the training codes' marginal distribution, so predicting that marginal scores 1: the
  categorical counterpart of dividing a squared error by the variance.

Samples whose stimulus is padding for a modality (``valid`` False) do not count in that
modality's loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

CODEBOOK_SIZE = 1024


@dataclass(frozen=True)
class ModalityStats:
    """mean/std of all training values (continuous) or the marginal code entropy (nats)."""

    mean: float = 0.0
    std: float = 1.0
    entropy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def continuous_stats(values: np.ndarray, rows: np.ndarray, block: int = 64) -> ModalityStats:
    """Mean and std (ddof 0) of every value in ``values[rows]``, streamed in blocks of rows
    (float64 accumulation; a memmap is never read whole)."""
    count, total, total_sq = 0, 0.0, 0.0
    for start in range(0, len(rows), block):
        chunk = np.asarray(values[rows[start:start + block]], dtype=np.float64)
        count += chunk.size
        total += chunk.sum()
        total_sq += np.square(chunk).sum()
    mean = total / count
    variance = max(total_sq / count - mean**2, 0.0)
    if variance <= 0:
        raise ValueError("the modality is constant over the training TRs; it cannot be normalized")
    return ModalityStats(mean=float(mean), std=float(math.sqrt(variance)))


def code_stats(codes: np.ndarray, rows: np.ndarray) -> ModalityStats:
    """Mean over codebooks of the entropy (nats) of each codebook's code histogram."""
    selected = np.asarray(codes[rows])  # (n, n_q, T)
    entropies = []
    for q in range(selected.shape[1]):
        counts = np.bincount(selected[:, q].ravel().astype(np.int64), minlength=CODEBOOK_SIZE)
        p = counts[counts > 0] / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return ModalityStats(entropy=max(float(np.mean(entropies)), 1e-6))


def _masked_mean(per_sample: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = valid.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1.0)


def continuous_loss(prediction: torch.Tensor, target_std: torch.Tensor, valid: torch.Tensor,
                    stats: ModalityStats, normalize: str) -> torch.Tensor:
    """``prediction`` and ``target_std`` are in standardized units ((x - mean) / std)."""
    if normalize == "variance":
        squared = (prediction - target_std) ** 2
    else:
        raw_pred = prediction * stats.std + stats.mean
        raw_target = target_std * stats.std + stats.mean
        squared = (raw_pred - raw_target) ** 2
        if normalize == "std":
            squared = squared / raw_target[valid].std().clamp_min(1e-12) if valid.any() else squared
    return _masked_mean(squared.flatten(1).mean(dim=1), valid)


def code_loss(logits: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor, stats: ModalityStats,
              normalize: str) -> torch.Tensor:
    """logits (B, n_q, 1024, T), codes (B, n_q, T)."""
    per_sample = F.cross_entropy(logits.float().transpose(1, 2), codes.long(), reduction="none").flatten(1).mean(1)
    loss = _masked_mean(per_sample, valid)
    return loss if normalize == "none" else loss / stats.entropy


def modality_losses(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                    stats: dict[str, ModalityStats], normalize: str, audio_is_codes: bool) -> dict[str, torch.Tensor]:
    """One loss per modality present in ``outputs`` (unweighted)."""
    losses = {}
    for name, prediction in outputs.items():
        valid = batch[f"{name}_valid"]
        if name == "audio" and audio_is_codes:
            losses[name] = code_loss(prediction, batch["audio"], valid, stats[name], normalize)
        else:
            losses[name] = continuous_loss(prediction.float(), batch[name], valid, stats[name], normalize)
    return losses


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    return sum(weights.get(name, 1.0) * value for name, value in losses.items())

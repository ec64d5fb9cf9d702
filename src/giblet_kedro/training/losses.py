"""Per-modality losses in units of each feature's own spread.

The lab meant every modality's error to be "in standard-deviation units of that
modality", so that pixels (0-255) or voxel units cannot swamp the others. One grand mean
and std per modality does not do that: a feature that varies little around its own mean
(a border pixel, a quiet embedding dimension) looks predictable, and predicting each
feature's own training mean already scored 0.58 (video), 0.32 (text) or 1.00 (fMRI).
So each **feature** is standardized with its own training-TR mean and std
(``loss_stats``):

- a feature is a pixel (channel, row, column: the frames of a TR pool), a CLIP
  embedding dimension, a mel band (its frames within the TR pool) or a voxel;
- ``variance`` (the default): the model works in standardized units and the loss is
  the mean over features of ``(prediction - x)^2 / var_feature``. Predicting every
  feature's training mean scores exactly 1 on the training TRs, in every continuous
  modality; scaling a modality (pixels x 255) changes nothing. Features that are constant
  over the training TRs carry no information and are left out of the mean;
- ``std``: the lab's shipped formula, ``mean((prediction - x)^2) / std(x in batch)`` in
  raw units, for comparison with old runs; ``none``: raw squared error;
- EnCodec codes: each codebook's cross-entropy divided by the entropy (nats) of its
  training marginal, averaged over codebooks, so predicting each codebook's marginal
  scores 1 (``variance`` and ``std``); ``none``: raw cross-entropy. A codebook that uses
  one code only carries no information and is left out.

Samples whose stimulus is padding for a modality (``valid`` False) do not count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from giblet_kedro.fmri.moments import RunningMoments

CODEBOOK_SIZE = 1024
NORMALIZE_MODES = ("variance", "std", "none")


@dataclass(frozen=True)
class ModalityStats:
    """Training statistics of one modality.

    Continuous: ``mean`` and ``std`` (ddof 0) have one training sample's shape, with
    size 1 on the pooled axes (e.g. video ``(1, 3, H, W)`` for samples ``(F, 3, H, W)``).
    Codes: ``entropy`` ``(n_q,)`` nats of each codebook's training marginal, and
    ``marginal`` ``(n_q, 1024)`` that distribution.
    """

    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    entropy: np.ndarray | None = None
    marginal: np.ndarray | None = None

    @property
    def is_codes(self) -> bool:
        return self.entropy is not None

    @property
    def scale(self) -> np.ndarray:
        """The std, with 1 where a feature is constant (so standardizing never divides by 0)."""
        return np.where(self.std > 0, self.std, 1.0)

    @property
    def informative(self) -> np.ndarray:
        """Which features (or codebooks) vary over the training TRs and enter the loss."""
        return self.entropy > 1e-9 if self.is_codes else self.std > 0

    def standardize(self, values: np.ndarray) -> np.ndarray:
        """(n, *sample) raw values -> float32 ``(x - mean) / std`` per feature."""
        return ((np.asarray(values, dtype=np.float32) - self.mean.astype(np.float32))
                / self.scale.astype(np.float32)).astype(np.float32)

    def restore(self, standardized: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`standardize`: (n, *sample) model units -> float32 raw units."""
        return (np.asarray(standardized, dtype=np.float32) * self.scale.astype(np.float32)
                + self.mean.astype(np.float32)).astype(np.float32)

    def mode_codes(self) -> np.ndarray:
        """(n_q,) int64: each codebook's most frequent training code (the codes' "mean")."""
        return np.asarray(self.marginal).argmax(axis=1).astype(np.int64)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        fields = ("entropy", "marginal") if self.is_codes else ("mean", "std")
        return {f"{prefix}_{name}": np.asarray(getattr(self, name)) for name in fields}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> ModalityStats:
        if f"{prefix}_entropy" in arrays:
            return cls(entropy=np.asarray(arrays[f"{prefix}_entropy"], dtype=np.float64),
                       marginal=np.asarray(arrays[f"{prefix}_marginal"], dtype=np.float64))
        return cls(mean=np.asarray(arrays[f"{prefix}_mean"], dtype=np.float64),
                   std=np.asarray(arrays[f"{prefix}_std"], dtype=np.float64))


def stats_to_arrays(stats: dict[str, ModalityStats]) -> dict[str, np.ndarray]:
    """The ``loss_stats`` npz: ``modalities`` plus each modality's arrays."""
    out = {"modalities": np.array(list(stats), dtype=np.str_)}
    for name, value in stats.items():
        out |= value.to_arrays(name)
    return out


def stats_from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, ModalityStats]:
    return {str(name): ModalityStats.from_arrays(arrays, str(name)) for name in np.atleast_1d(arrays["modalities"])}


def _feature_rows(chunk: np.ndarray, pool_axes: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """(n, *sample) -> (n * pooled, n_features) observations, and the stats' shape."""
    sample_axes = [axis + 1 for axis in pool_axes]
    moved = np.moveaxis(chunk, sample_axes, list(range(1, 1 + len(sample_axes))))
    feature_shape = moved.shape[1 + len(sample_axes):]
    stats_shape = tuple(1 if axis in pool_axes else size for axis, size in enumerate(chunk.shape[1:]))
    return moved.reshape(-1, int(np.prod(feature_shape, dtype=np.int64))), stats_shape


def continuous_stats(values: np.ndarray, rows: np.ndarray, pool_axes: tuple[int, ...] = (), block: int = 64
                     ) -> ModalityStats:
    """Per-feature mean and std (ddof 0) over ``values[rows]``, streamed in blocks of rows
    (float64; a memmap is never read whole).

    Parameters
    ----------
    values : (n_trs, *sample) array, e.g. video (n_trs, F, 3, H, W).
    rows : training rows.
    pool_axes : axes of one sample that are repeated observations of the same feature
        (video: 0, the frames of a TR; mel: 1, the frames within the TR).

    Returns
    -------
    ModalityStats with ``mean``/``std`` of one sample's shape, size 1 on ``pool_axes``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise ValueError("no training TRs with a valid stimulus: the modality cannot be normalized")
    moments, shape = None, None
    for start in range(0, len(rows), block):
        observations, shape = _feature_rows(np.asarray(values[rows[start:start + block]], dtype=np.float64), pool_axes)
        if moments is None:
            moments = RunningMoments(observations.shape[1])
        moments.update(observations)
    std = np.sqrt(np.maximum(moments.m2 / moments.count, 0.0))
    if not (std > 0).any():
        raise ValueError("the modality is constant over the training TRs; it cannot be normalized")
    return ModalityStats(mean=moments.mean.reshape(shape), std=std.reshape(shape))


def code_stats(codes: np.ndarray, rows: np.ndarray) -> ModalityStats:
    """Each codebook's training marginal over ``codes[rows]`` ((n, n_q, T) ints) and its entropy (nats)."""
    selected = np.asarray(codes[np.asarray(rows, dtype=np.int64)])
    marginal = np.stack([np.bincount(selected[:, q].ravel().astype(np.int64), minlength=CODEBOOK_SIZE)
                         for q in range(selected.shape[1])]).astype(np.float64)
    marginal /= marginal.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(marginal > 0, marginal * np.log(marginal), 0.0).sum(axis=1)
    if not (entropy > 1e-9).any():
        raise ValueError("every codebook uses a single code over the training TRs; the codes carry no information")
    return ModalityStats(entropy=entropy, marginal=marginal)


# ------------------------------------------------------------------------- torch
@dataclass(frozen=True)
class TorchStats:
    """One modality's statistics as tensors on the training device."""

    mean: torch.Tensor | None
    scale: torch.Tensor | None
    weight: torch.Tensor  # 1 for informative features / codebooks, else 0
    entropy: torch.Tensor | None

    @classmethod
    def of(cls, stats: ModalityStats, device: torch.device | str = "cpu") -> TorchStats:
        tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
        weight = tensor(stats.informative)
        if stats.is_codes:
            return cls(mean=None, scale=None, weight=weight, entropy=tensor(np.maximum(stats.entropy, 1e-9)))
        return cls(mean=tensor(stats.mean), scale=tensor(stats.scale), weight=weight, entropy=None)


def torch_stats(stats: dict[str, ModalityStats], device: torch.device | str = "cpu") -> dict[str, TorchStats]:
    return {name: TorchStats.of(value, device) for name, value in stats.items()}


def _masked_mean(per_sample: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = valid.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1.0)


def continuous_per_sample(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, stats: TorchStats,
                          normalize: str) -> torch.Tensor:
    """(B,) loss of each sample; ``prediction`` and ``target`` are standardized per feature.

    ``variance``: mean over informative features of the squared standardized error;
    ``std``: raw squared error over the std of the batch's valid raw targets (the lab's);
    ``none``: raw squared error.
    """
    if normalize == "variance":
        squared = (prediction - target) ** 2 * stats.weight
        per_feature = stats.weight.expand_as(prediction[0]).sum().clamp_min(1.0)
        return squared.flatten(1).sum(1) / per_feature
    raw_prediction = prediction * stats.scale + stats.mean
    raw_target = target * stats.scale + stats.mean
    squared = ((raw_prediction - raw_target) ** 2).flatten(1).mean(1)
    if normalize == "std":
        spread = raw_target[valid].std() if int(valid.sum()) * raw_target[0].numel() > 1 else None
        return squared / spread.clamp_min(1e-12) if spread is not None else squared
    if normalize == "none":
        return squared
    raise ValueError(f"unknown loss.normalize {normalize!r}; accepted: {NORMALIZE_MODES}")


CROSS_ENTROPY_SAMPLES = 8  # samples whose (n_q, 1024, T) logits are exponentiated at once


class _CodeCrossEntropy(torch.autograd.Function):
    """Cross-entropy of every code, ``logsumexp(logits) - logits[code]`` over the codebook
    axis, a few samples at a time, with its gradient formed in the forward pass.

    The gradient with respect to the logits is ``softmax(logits) - onehot(code)`` times the
    incoming gradient. The forward pass writes the first factor into one array and keeps
    it instead of the logits, and the backward pass scales it in place. Autograd's own
    graph of the same expression keeps the logits and allocates several arrays of their
    size in the backward pass (the exponentials, the softmax times the gradient, the
    one-hot scatter and their sum): at the lab's 4 codebooks x 1,024 codes x 112 frames a
    TR, 1.8 MB a TR each, the largest transient of a training step. Kept this way, the
    logits can be freed once the losses are formed. The backward pass runs once.

    logits (B, n_q, K, T) float, codes (B, n_q, T) int64 -> (B, n_q, T) nats.
    """

    @staticmethod
    def forward(ctx, logits, codes):
        lse = torch.empty(logits.shape[0], logits.shape[1], logits.shape[3], dtype=logits.dtype, device=logits.device)
        for part in range(0, logits.shape[0], CROSS_ENTROPY_SAMPLES):
            piece = slice(part, part + CROSS_ENTROPY_SAMPLES)
            lse[piece] = torch.logsumexp(logits[piece], dim=2)
        nats = lse - logits.gather(2, codes.unsqueeze(2)).squeeze(2)
        if ctx.needs_input_grad[0]:
            softmax_minus_onehot = torch.empty_like(logits)
            for part in range(0, logits.shape[0], CROSS_ENTROPY_SAMPLES):
                piece = slice(part, part + CROSS_ENTROPY_SAMPLES)
                torch.exp(logits[piece] - lse[piece].unsqueeze(2), out=softmax_minus_onehot[piece])
            softmax_minus_onehot.scatter_add_(2, codes.unsqueeze(2), torch.full_like(nats, -1.0).unsqueeze(2))
            ctx.save_for_backward(softmax_minus_onehot)
        return nats

    @staticmethod
    @once_differentiable  # the gradient's own gradient is not formed: a double backward raises
    def backward(ctx, grad):
        if getattr(ctx, "done", False):
            raise RuntimeError("the code cross-entropy's backward pass runs once (its gradient is scaled in place)")
        ctx.done = True
        (gradient,) = ctx.saved_tensors
        return gradient.mul_(grad.unsqueeze(2)), None


def code_cross_entropy(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(B, n_q, T) cross-entropy (nats) of each code under the logits (B, n_q, 1024, T)
    (log-softmax over the codebook axis)."""
    return _CodeCrossEntropy.apply(logits.to(torch.promote_types(logits.dtype, torch.float32)).contiguous(),
                                   codes.long())


def code_per_sample(logits: torch.Tensor, codes: torch.Tensor, stats: TorchStats, normalize: str) -> torch.Tensor:
    """(B,) loss of each sample; logits (B, n_q, 1024, T), codes (B, n_q, T)."""
    cross_entropy = code_cross_entropy(logits, codes).mean(2)  # (B, n_q)
    if normalize == "none":
        return cross_entropy.mean(1)
    return (cross_entropy / stats.entropy * stats.weight).sum(1) / stats.weight.sum().clamp_min(1.0)


def per_sample_losses(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                      stats: dict[str, TorchStats], normalize: str, audio_is_codes: bool) -> dict[str, torch.Tensor]:
    """(B,) loss of every sample, per modality present in ``outputs`` (unweighted)."""
    losses = {}
    for name, prediction in outputs.items():
        if name == "audio" and audio_is_codes:
            losses[name] = code_per_sample(prediction, batch["audio"], stats[name], normalize)
        else:
            losses[name] = continuous_per_sample(prediction.float(), batch[name], batch[f"{name}_valid"],
                                                 stats[name], normalize)
    return losses


def modality_losses(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                    stats: dict[str, TorchStats], normalize: str, audio_is_codes: bool) -> dict[str, torch.Tensor]:
    """One loss per modality present in ``outputs``: the mean over valid samples."""
    per_sample = per_sample_losses(outputs, batch, stats, normalize, audio_is_codes)
    return {name: _masked_mean(value, batch[f"{name}_valid"]) for name, value in per_sample.items()}


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    return sum(weights.get(name, 1.0) * value for name, value in losses.items())

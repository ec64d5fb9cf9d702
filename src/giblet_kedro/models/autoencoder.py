"""The multimodal autoencoder whose middle layer is the brain.

Per-TR encoders turn each TR's stimulus into features; a temporal module
(:mod:`giblet_kedro.models.temporal`) writes every TR's bottleneck from the features of
that TR and the context before it (the haemodynamic response is learned, not given: the
inputs carry no HRF); per-TR decoders reconstruct each modality from the bottleneck.

Two layouts (``model.bottleneck``):

- ``voxels`` (the default, the giblet idea): encoders -> a rank-``r`` code per TR ->
  temporal module -> **the voxel layer** (one unit per voxel, trained to match the
  standardized fMRI) -> for each decoder its own projection voxels -> rank ``r`` -> the
  decoder. The decoders read nothing but the voxel layer, so silencing a region of it (a
  lesion) shows what that region carries. The projections are factorized (``V x r``
  each) so the parameter count stays bounded at 83,138 voxels: about 101 M parameters at
  the lab's sizes with ``r = 256``, against 3.5 billion for the original fully connected
  model.
- an integer (the original layout): encoders -> temporal module -> a latent of that
  width -> decoders, with an fMRI head latent -> voxels on the side (factorized through
  ``rank`` when the spec gives one). Lesions cannot act on a model layer here: the lesion
  stage reads measured brain activity into the latent through a ridge read-out.

In ``per_subject`` mode the voxel layer is the shared average brain, and each subject's
head (:class:`SubjectHeads`) maps it to that subject's fMRI.

Shapes (B = batch, T = TRs of a window):

- video  (B, T, F, 3, H, W) standardized frames: frames stacked as channels, a strided
  conv encoder per TR; a transposed-conv decoder back to (B, T, F, 3, H, W).
  Convolutions keep the parameter count independent of the frame size.
- audio  codes (B, T, n_q, L) int: one embedding table per codebook, summed, a 1-D conv
  encoder; the decoder predicts logits (B, T, n_q, 1024, L) for a cross-entropy. ``mel``
  (B, T, n_mels, L) float: conv encoder, MSE decoder.
- text   (B, T, D) standardized CLIP embedding, features (B, T, D) the lab's own
  (stimulus.features): MLPs.
- fmri   (B, T, V): the voxel layer itself (``voxels``) or the head's output.

The last layer of each decoder and of the fMRI path starts at zero, so before training
every prediction is the training mean (standardized 0) or the uniform code
distribution. torch only: this module runs on a GPU machine without the rest of the
stack (``PYTHONPATH=src``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from giblet_kedro.models.temporal import LINEAR_TEMPORAL, build_temporal, context_trs

CODEBOOK_SIZE = 1024
DEFAULT_RANK = 256  # voxels layout, when the spec leaves model.rank out


@dataclass(frozen=True)
class ModalityShapes:
    """Per-sample shapes of each present modality (None when absent)."""

    video: tuple[int, ...] | None  # (F, 3, H, W)
    audio: tuple[int, ...] | None  # (n_q, T) codes or (n_mels, T) mel
    audio_is_codes: bool
    text: tuple[int, ...] | None  # (D,)
    n_voxels: int
    features: tuple[int, ...] | None = None  # (D,): the spec's stimulus.features, side by side

    def present(self) -> list[str]:
        return [name for name in ("video", "audio", "text", "features") if getattr(self, name) is not None]


def _zero_last(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


RECOMPUTED_TRS = 16  # TRs per recomputed piece: the backward holds one piece's maps at a time


def _recomputed(function, x: torch.Tensor) -> torch.Tensor:
    """``function(x)`` of a batch of TRs (N, ...); when gradients are on (training), its
    intermediate activations are recomputed in the backward pass instead of kept
    (activation checkpointing), ``RECOMPUTED_TRS`` TRs at a time. For the frame-sized maps
    of the video's convolutions: a training step holds every TR of its windows at once,
    and these maps are most of its activations at the lab's 160x90 frames, for one more
    forward pass of a few convolutions. Recomputed in pieces, the backward pass holds one
    piece's maps and their gradients, not those of every TR."""
    if not torch.is_grad_enabled():
        return function(x)
    return torch.cat([checkpoint(function, piece, use_reentrant=False) for piece in x.split(RECOMPUTED_TRS)])


def _smooth_abs(x: torch.Tensor) -> torch.Tensor:
    """|x|, smoothed at 0 (``sqrt(x^2 + 1e-3)``) so that its gradient is defined everywhere."""
    return torch.sqrt(x * x + 1e-3)


class VideoEncoder(nn.Module):
    """(N, F, 3, H, W) -> (N, hidden): three reads of the frames stacked as channels, summed:

    - a strided conv stack (nonlinear features);
    - an energy read: ``ENERGY_FILTERS`` learned filters over space and the TR's frames,
      full-wave rectified and averaged over an ``ENERGY_GRID`` of regions, then read
      linearly. This is the complex-cell (motion-energy) model of early visual cortex:
      local contrast and change between frames, which no linear map of pixels reaches
      and which a stack of half-wave units has to learn in sign-paired filters;
    - a linear read of the frames average-pooled to ``LINEAR_GRID`` (the ridge's view).
    """

    LINEAR_GRID = (9, 16)
    ENERGY_FILTERS, ENERGY_GRID = 16, (4, 4)

    def __init__(self, shape: tuple[int, ...], hidden: int):
        super().__init__()
        frames, channels, _, _ = shape
        self.net = nn.Sequential(
            nn.Conv2d(frames * channels, 32, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 128, 4, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d((4, 4)), nn.Flatten(), nn.Linear(128 * 16, hidden), nn.GELU(),
        )
        self.energy_filters = nn.Conv2d(frames * channels, self.ENERGY_FILTERS, 5, stride=1, padding=2)
        self.energy_read = nn.Sequential(nn.AdaptiveAvgPool2d(self.ENERGY_GRID), nn.Flatten(),
                                         nn.Linear(self.ENERGY_FILTERS * self.ENERGY_GRID[0] * self.ENERGY_GRID[1],
                                                   hidden))
        grid = self.LINEAR_GRID[0] * self.LINEAR_GRID[1]
        self.linear = nn.Sequential(nn.AdaptiveAvgPool2d(self.LINEAR_GRID), nn.Flatten(),
                                    nn.Linear(frames * channels * grid, hidden))

    def energy(self, stacked: torch.Tensor) -> torch.Tensor:
        """(N, hidden) the energy read of frames stacked as channels (N, F * 3, H, W)."""
        return self.energy_read(_smooth_abs(self.energy_filters(stacked)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = x.flatten(1, 2)
        return _recomputed(self.net, stacked) + _recomputed(self.energy, stacked) + self.linear(stacked)


class VideoDecoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], width: int):
        super().__init__()
        self.shape = shape
        frames, channels, height, width_px = shape
        self.grid = (math.ceil(height / 8), math.ceil(width_px / 8))
        self.project = nn.Linear(width, 128 * self.grid[0] * self.grid[1])
        self.net = nn.Sequential(
            nn.GELU(), nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1),
            nn.GELU(), nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.GELU(), _zero_last(nn.ConvTranspose2d(32, frames * channels, 4, stride=2, padding=1)),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        frames, channels, height, width = self.shape
        x = _recomputed(self.net, self.project(z).view(-1, 128, *self.grid))
        return x[:, :, :height, :width].reshape(-1, frames, channels, height, width)


class SequenceEncoder(nn.Module):
    """(B, C, T) -> (B, hidden): a strided 1-D conv stack plus a linear read of the
    input average-pooled to ``LINEAR_STEPS`` steps (what a linear model sees)."""

    LINEAR_STEPS = 4

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, 128, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv1d(128, 128, 5, stride=2, padding=2), nn.GELU(),
            nn.AdaptiveAvgPool1d(8), nn.Flatten(), nn.Linear(128 * 8, hidden), nn.GELU(),
        )
        self.linear = nn.Sequential(nn.AdaptiveAvgPool1d(self.LINEAR_STEPS), nn.Flatten(),
                                    nn.Linear(channels * self.LINEAR_STEPS, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.linear(x)


class SequenceDecoder(nn.Module):
    """(B, width) -> (B, out_channels, T)."""

    def __init__(self, width: int, out_channels: int, length: int):
        super().__init__()
        self.length, self.base = length, math.ceil(length / 4)
        self.project = nn.Linear(width, 128 * self.base)
        self.net = nn.Sequential(
            nn.GELU(), nn.ConvTranspose1d(128, 128, 4, stride=2, padding=1),
            nn.GELU(), nn.ConvTranspose1d(128, 128, 4, stride=2, padding=1),
            nn.GELU(), _zero_last(nn.Conv1d(128, out_channels, 1)),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(-1, 128, self.base))[:, :, : self.length]


class AudioCodeEncoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], hidden: int, embed: int = 64):
        super().__init__()
        n_q, _ = shape
        self.embed = nn.Embedding(n_q * CODEBOOK_SIZE, embed)
        self.register_buffer("offsets", torch.arange(n_q).view(1, n_q, 1) * CODEBOOK_SIZE, persistent=False)
        self.sequence = SequenceEncoder(embed, hidden)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        summed = self.embed(codes.long() + self.offsets).sum(dim=1)  # (B, T, embed)
        return self.sequence(summed.transpose(1, 2))


class VectorEncoder(nn.Module):
    """(N, D) -> (N, hidden): an MLP plus a linear read of the vector."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.linear = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.linear(x)


def resolve_rank(bottleneck: int | str, rank: int | None) -> int | None:
    """The rank of the voxel projections: ``rank``, else 256 for the voxels layout; the
    latent layout's fMRI head is full (None) unless a rank is given."""
    if rank is not None:
        return int(rank)
    return DEFAULT_RANK if bottleneck == "voxels" else None


def _factorized(inputs: int, outputs: int, rank: int | None, zero_output: bool) -> nn.Module:
    """inputs -> outputs, through ``rank`` units (no nonlinearity: a low-rank linear map)."""
    last = nn.Linear(inputs if rank is None else rank, outputs)
    if zero_output:
        _zero_last(last)
    return last if rank is None else nn.Sequential(nn.Linear(inputs, rank, bias=False), last)


class _GainedReadout(torch.autograd.Function):
    """``y[n, v] = sum_k gain[v, k] * (weight[v] @ components[n, k]) + bias[v]`` with a
    hand-written backward that keeps only the inputs: autograd's own graph of the same sum
    would hold two (N, V) arrays per component (each product and each partial sum), 4 MB a
    TR at the lab's 83,138 voxels and 6 components, the largest share of a training step's
    activations. The backward recomputes each component's (N, V) product, one at a time.

    components (N, K, C), weight (V, C), gain (V, K), bias (V,), all of one dtype -> (N, V).
    """

    @staticmethod
    def forward(ctx, components, weight, gain, bias):
        out = bias.expand(components.shape[0], -1).clone()
        for k in range(components.shape[1]):
            out.addcmul_(components[:, k] @ weight.T, gain[:, k])
        ctx.save_for_backward(components, weight, gain)
        return out

    @staticmethod
    def backward(ctx, grad):
        components, weight, gain = ctx.saved_tensors
        grad_components = torch.empty_like(components)
        grad_weight = torch.zeros_like(weight)
        grad_gain = torch.empty_like(gain)
        for k in range(components.shape[1]):
            scaled = grad * gain[:, k]  # (N, V)
            grad_components[:, k] = scaled @ weight
            grad_weight.addmm_(scaled.T, components[:, k])
            grad_gain[:, k] = (grad * (components[:, k] @ weight.T)).sum(0)
        return grad_components, grad_weight, grad_gain, grad.sum(0)


class VoxelLayer(nn.Module):
    """The voxel layer from the temporal module's components: each voxel weighs the
    components (one per lag-basis function) with its own gains, then reads the channels
    through its row of ``weight``. So every voxel has its own lag profile: ``y[v, t] =
    sum_k gain[v, k] * (weight[v] @ component_k[t]) + bias[v]``.

    components : (..., K, C) -> (..., V). ``weight`` and ``bias`` start at zero (the
    training mean), the gains at one (every voxel the temporal module's sum). One
    component at a time, so no (..., K, V) array is held, in the forward pass or the
    backward (:class:`_GainedReadout`).
    """

    def __init__(self, channels: int, n_voxels: int, n_components: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_voxels, channels))
        self.bias = nn.Parameter(torch.zeros(n_voxels))
        self.gain = nn.Parameter(torch.ones(n_voxels, n_components))

    def forward(self, components: torch.Tensor) -> torch.Tensor:
        dtype, leading = components.dtype, components.shape[:-2]
        out = _GainedReadout.apply(components.reshape(-1, *components.shape[-2:]), self.weight.to(dtype),
                                   self.gain.to(dtype), self.bias.to(dtype))
        return out.view(*leading, out.shape[-1])


class SubjectHeads(nn.Module):
    """Each subject's fMRI from the shared average brain (TRIBE's subject layers): a scale
    and an offset per voxel, plus a residual of rank ``rank`` from the temporal features.

    average : (B, T, V); features : (B, T, C); subjects : (B,) int -> (B, T, V).
    Starts as the identity (scale 1, offset 0, residual 0).
    """

    def __init__(self, n_subjects: int, n_voxels: int, rank: int, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n_subjects, n_voxels))
        self.offset = nn.Parameter(torch.zeros(n_subjects, n_voxels))
        self.rank = int(rank)
        if self.rank:
            self.down = nn.Parameter(torch.randn(n_subjects, self.rank, channels) / math.sqrt(channels))
            self.up = nn.Parameter(torch.zeros(n_subjects, n_voxels, self.rank))

    def forward(self, average: torch.Tensor, features: torch.Tensor, subjects: torch.Tensor) -> torch.Tensor:
        subjects = subjects.long()
        out = average * self.scale[subjects][:, None, :] + self.offset[subjects][:, None, :]
        if self.rank:
            code = torch.einsum("btc,brc->btr", features, self.down[subjects])
            out = out + torch.einsum("btr,bvr->btv", code, self.up[subjects])
        return out


def _flat(x: torch.Tensor, leading: int) -> torch.Tensor:
    return x.reshape(-1, *x.shape[leading:])


class MultimodalAutoencoder(nn.Module):
    """Encoders (per TR) -> temporal module -> bottleneck (the voxel layer, or a latent) ->
    decoders (per TR) (+ fMRI head; + subject heads in ``per_subject``).

    ``encode`` gives the bottleneck the decoders read, for windows of TRs; ``decode`` maps
    a bottleneck (any leading shape) to every output. In the voxels layout the bottleneck
    is the fMRI prediction itself (the average brain), and ``readout`` /
    ``decode_readouts`` split decoding at the per-decoder projections, so a lesion can be
    applied exactly and cheaply (see :mod:`giblet_kedro.evaluation.lesion`).

    ``n_lags``: TRs each bottleneck TR reads (its own and the context before it); ``tr``
    (s) places the lag basis's HRF; ``n_subjects`` > 0 adds a head per subject.
    """

    def __init__(self, shapes: ModalityShapes, bottleneck: int | str, hidden: int, dropout: float,
                 rank: int | None = None, temporal: str = "lags", n_lags: int = 14, tr: float = 1.5,
                 lag_basis: int = 6, n_subjects: int = 0, head_rank: int = 0, code_rank: int | None = None):
        super().__init__()
        self.shapes = shapes
        present = shapes.present()
        if not present:
            raise ValueError("the model needs at least one stimulus modality (video, audio, text or features)")
        self.voxel_layout = bottleneck == "voxels"
        self.rank = resolve_rank(bottleneck, rank)
        self.temporal_kind, self.n_lags = temporal, int(n_lags)
        width = shapes.n_voxels if self.voxel_layout else int(bottleneck)
        decoder_width = self.rank if self.voxel_layout else width
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        if shapes.video is not None:
            self.encoders["video"] = VideoEncoder(shapes.video, hidden)
            self.decoders["video"] = VideoDecoder(shapes.video, decoder_width)
        if shapes.audio is not None:
            channels, length = shapes.audio
            if shapes.audio_is_codes:
                self.encoders["audio"] = AudioCodeEncoder(shapes.audio, hidden)
                self.decoders["audio"] = SequenceDecoder(decoder_width, channels * CODEBOOK_SIZE, length)
            else:
                self.encoders["audio"] = SequenceEncoder(channels, hidden)
                self.decoders["audio"] = SequenceDecoder(decoder_width, channels, length)
        for name in ("text", "features"):  # vectors per TR: MLPs
            if getattr(shapes, name) is None:
                continue
            (dim,) = getattr(shapes, name)
            self.encoders[name] = VectorEncoder(dim, hidden)
            self.decoders[name] = nn.Sequential(nn.Linear(decoder_width, hidden), nn.GELU(),
                                                  _zero_last(nn.Linear(hidden, dim)))
        fused = hidden * len(present)
        # the temporal module's channels: the code (voxels: code_rank, else the decoders'
        # rank; a latent: code_rank, else the latent itself)
        self.channels = int(code_rank or (self.rank if self.voxel_layout else width))
        self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused, self.channels, bias=not self.voxel_layout))
        self.temporal = build_temporal(temporal, self.channels, self.n_lags, tr, lag_basis, dropout)
        if self.voxel_layout:
            # the voxel layer starts at the training mean (0)
            self.to_bottleneck = VoxelLayer(self.channels, width, getattr(self.temporal, "n_components", 1))
            self.readouts = nn.ModuleDict({name: nn.Linear(width, self.rank) for name in self.decoders})
            self.fmri_head = nn.Identity()
        else:
            # a code narrower than the latent is widened to it after the temporal module
            self.to_bottleneck = nn.Identity() if self.channels == width else nn.Linear(self.channels, width)
            self.readouts = nn.ModuleDict({name: nn.Identity() for name in self.decoders})
            self.fmri_head = _factorized(width, shapes.n_voxels, self.rank, zero_output=True)
        self.heads = SubjectHeads(n_subjects, shapes.n_voxels, head_rank, self.channels) if n_subjects else None
        # The training-mean stimulus (0 in standardized units; codes: each codebook's most
        # frequent training code, set from the statistics): the temporal module reads each
        # TR's change from it, so a constant stimulus at the mean, an ablated modality and
        # the time before a run's first TR all give a constant drive, with no transient.
        n_q = shapes.audio[0] if shapes.audio is not None and shapes.audio_is_codes else 0
        self.register_buffer("neutral_codes", torch.zeros(n_q, dtype=torch.long))

    def set_neutral_codes(self, codes) -> None:
        """(n_q,) each codebook's most frequent training code: the audio's training mean."""
        self.neutral_codes.copy_(torch.as_tensor(codes, dtype=torch.long))

    def neutral_inputs(self) -> dict[str, torch.Tensor]:
        """One TR of the training-mean stimulus, (1, *sample) per modality."""
        device = self.neutral_codes.device
        out = {}
        for name in self.encoders:
            shape = getattr(self.shapes, name)
            if name == "audio" and self.shapes.audio_is_codes:
                out[name] = self.neutral_codes.view(1, -1, 1).expand(1, *shape)
            else:
                out[name] = torch.zeros(1, *shape, device=device)
        return out

    def _code(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """(..., channels) the per-TR code of encoder outputs (dropout first, in training)."""
        return self.project(torch.cat([encoded[name] for name in self.encoders], dim=-1))

    @property
    def linear_in_time(self) -> bool:
        """Is the bottleneck affine in the encoders' outputs (dropout off)? Then a modality's
        contribution adds, and moving it in time is filtering its shifted outputs again."""
        return self.temporal_kind in LINEAR_TEMPORAL

    def encode_trs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's per-TR features, (N, hidden), from (N, *sample) inputs."""
        return {name: encoder(inputs[name]) for name, encoder in self.encoders.items()}

    def components_from_encoded(self, encoded: dict[str, torch.Tensor], present: torch.Tensor | None = None
                                ) -> torch.Tensor:
        """(B, T, K, channels): the temporal module's output, in its K components (one per
        lag-basis function; their sum is the output), from per-TR features (B, T, hidden)
        per modality, each TR's code taken relative to the training-mean stimulus's; TRs
        not ``present`` (B, T) (padding before a run's start) are the training mean."""
        code = self._code(encoded)
        neutral = self.encode_trs(self.neutral_inputs())
        linear = self.project[-1]  # the neutral stimulus's code, without dropout
        code = code - linear(torch.cat([neutral[name] for name in self.encoders], dim=-1)).to(code.dtype)
        if present is not None:
            code = code * present.unsqueeze(-1).to(code.dtype)
        return self.temporal.components(code)

    def features_from_encoded(self, encoded: dict[str, torch.Tensor], present: torch.Tensor | None = None
                              ) -> torch.Tensor:
        """(B, T, channels): the temporal module's output (see :meth:`components_from_encoded`)."""
        return self.components_from_encoded(encoded, present).sum(-2)

    def _bottleneck(self, components: torch.Tensor) -> torch.Tensor:
        return self.to_bottleneck(components if self.voxel_layout else components.sum(-2))

    def fmri_from_components(self, components: torch.Tensor) -> torch.Tensor:
        """(..., V) the predicted fMRI (the average brain) from the temporal module's
        components (..., K, channels) of the same TRs."""
        return self.fmri_head(self._bottleneck(components))

    def bottleneck_from_encoded(self, encoded: dict[str, torch.Tensor], present: torch.Tensor | None = None
                                ) -> torch.Tensor:
        """(B, T, bottleneck) from per-TR features (B, T, hidden) per modality."""
        return self._bottleneck(self.components_from_encoded(encoded, present))

    def encode_windows(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-TR features (B, T, hidden) per modality from (B, T, *sample) inputs."""
        batch, n_trs = next(iter(inputs[name] for name in self.encoders)).shape[:2]
        flat = self.encode_trs({name: _flat(inputs[name], 2) for name in self.encoders})
        return {name: value.view(batch, n_trs, -1) for name, value in flat.items()}

    def encode(self, inputs: dict[str, torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, bottleneck) from windows of stimulus inputs (B, T, *sample): the voxel
        layer in the voxels layout."""
        return self.bottleneck_from_encoded(self.encode_windows(inputs), present)

    def readout(self, bottleneck: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each decoder's input: (N, rank) projections of the voxel layer (the latent itself otherwise)."""
        return {name: layer(bottleneck) for name, layer in self.readouts.items()}

    def decode_readouts(self, readouts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each stimulus modality's reconstruction from its decoder input (N, width) (audio
        codes: logits)."""
        outputs = {}
        for name, decoder in self.decoders.items():
            out = decoder(readouts[name])
            if name == "audio" and self.shapes.audio_is_codes:
                n_q, length = self.shapes.audio
                out = out.view(-1, n_q, CODEBOOK_SIZE, length)
            outputs[name] = out
        return outputs

    def decode(self, bottleneck: torch.Tensor) -> dict[str, torch.Tensor]:
        """``fmri`` (..., V) and every modality's reconstruction from a bottleneck (...,
        width), for any leading shape."""
        leading = bottleneck.shape[:-1]
        flat = bottleneck.reshape(-1, bottleneck.shape[-1])
        outputs = {"fmri": self.fmri_head(flat), **self.decode_readouts(self.readout(flat))}
        return {name: value.reshape(*leading, *value.shape[1:]) for name, value in outputs.items()}

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor | None = None,
                subjects: torch.Tensor | None = None, first: int = 0) -> dict[str, torch.Tensor]:
        """Every output (B, T - first, ...) for windows of inputs (B, T, *sample): the
        temporal module reads the whole window, the voxel layer, heads and decoders only
        its TRs from ``first`` on (in training, the first ``n_lags - 1`` TRs of a window
        are context, never a target). With subject heads and ``subjects`` (B,), ``fmri``
        is each window's subject's prediction and ``average`` the shared average brain."""
        components = self.components_from_encoded(self.encode_windows(inputs), present)[:, first:]
        outputs = self.decode(self._bottleneck(components))
        if self.heads is not None and subjects is not None:
            outputs["average"] = outputs["fmri"]
            outputs["fmri"] = self.heads(outputs["fmri"], components.sum(-2), subjects)
        return outputs


def model_context(model: dict, tr: float) -> int:
    """TRs each bottleneck TR reads (``model.context_s`` at this TR)."""
    return context_trs(float(model.get("context_s", 21.0)), tr)


def build_model(shapes: ModalityShapes, model: dict, tr: float, n_subjects: int = 0,
                dropout: float | None = None) -> MultimodalAutoencoder:
    """The autoencoder of a spec's ``model`` section at this TR (s); ``n_subjects`` > 0:
    a head per subject (``per_subject``); ``dropout`` overrides the spec's (0 to evaluate)."""
    return MultimodalAutoencoder(shapes, model["bottleneck"], model["hidden"],
                                 model["dropout"] if dropout is None else dropout, model.get("rank"),
                                 temporal=model.get("temporal", "lags"), n_lags=model_context(model, tr), tr=tr,
                                 lag_basis=int(model.get("lag_basis") or 6), n_subjects=n_subjects,
                                 head_rank=int(model.get("head_rank", 0)), code_rank=model.get("code_rank"))

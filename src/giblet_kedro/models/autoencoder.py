"""The multimodal autoencoder whose middle layer is the brain.

Two layouts (``model.bottleneck``):

- ``voxels`` (the default, the giblet idea): stimulus encoders -> a rank-``r`` code ->
  **the voxel layer** (one unit per voxel, trained to match the standardized fMRI) ->
  for each decoder its own projection voxels -> rank ``r`` -> the decoder. The decoders
  read nothing but the voxel layer, so silencing a region of it (a lesion) shows what
  that region carries. The projections are factorized (``V x r`` each) so the parameter
  count stays bounded at 83,138 voxels: about 101 M parameters at the lab's sizes with
  ``r = 256``, against 3.5 billion for the lab's fully connected model.
- an integer (the lab's shipped layout): encoders -> a latent of that width -> decoders,
  with an fMRI head latent -> voxels on the side (factorized through ``rank`` when the
  spec gives one). Lesions cannot act on a model layer here: the lesion stage reads
  measured brain activity into the latent through a ridge read-out, and says so.

Shapes (B = batch):

- video  (B, F, 3, H, W) standardized frames: frames stacked as channels, a strided conv
  encoder; a transposed-conv decoder back to (B, F, 3, H, W). Convolutions keep the
  parameter count independent of the frame size.
- audio  codes (B, n_q, T) int: one embedding table per codebook, summed, a 1-D conv
  encoder; the decoder predicts logits (B, n_q, 1024, T) for a cross-entropy. ``mel``
  (B, n_mels, T) float: conv encoder, MSE decoder.
- text   (B, D) standardized CLIP embedding, features (B, D) the lab's own (stimulus.features): MLPs.
- fmri   (B, V): the voxel layer itself (``voxels``) or the head's output.

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


class VideoEncoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], hidden: int):
        super().__init__()
        frames, channels, _, _ = shape
        self.net = nn.Sequential(
            nn.Conv2d(frames * channels, 32, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 128, 4, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d((4, 4)), nn.Flatten(), nn.Linear(128 * 16, hidden), nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1, 2))


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
        x = self.net(self.project(z).view(-1, 128, *self.grid))
        return x[:, :, :height, :width].reshape(-1, frames, channels, height, width)


class SequenceEncoder(nn.Module):
    """(B, C, T) -> (B, hidden): a strided 1-D conv stack."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, 128, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv1d(128, 128, 5, stride=2, padding=2), nn.GELU(),
            nn.AdaptiveAvgPool1d(8), nn.Flatten(), nn.Linear(128 * 8, hidden), nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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


class MultimodalAutoencoder(nn.Module):
    """Encoders -> bottleneck (the voxel layer, or a latent) -> decoders (+ fMRI head).

    ``encode`` gives the bottleneck the decoders read; ``decode`` maps a bottleneck to
    every output. In the voxels layout the bottleneck is the fMRI prediction itself, and
    ``readout`` / ``decode_readouts`` split decoding at the per-decoder projections, so a
    lesion can be applied exactly and cheaply (see :mod:`giblet_kedro.evaluation.lesion`).
    """

    def __init__(self, shapes: ModalityShapes, bottleneck: int | str, hidden: int, dropout: float,
                 rank: int | None = None):
        super().__init__()
        self.shapes = shapes
        present = shapes.present()
        if not present:
            raise ValueError("the model needs at least one stimulus modality (video, audio, text or features)")
        self.voxel_layout = bottleneck == "voxels"
        self.rank = resolve_rank(bottleneck, rank)
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
            self.encoders[name] = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
            self.decoders[name] = nn.Sequential(nn.Linear(decoder_width, hidden), nn.GELU(),
                                                  _zero_last(nn.Linear(hidden, dim)))
        fused = hidden * len(present)
        if self.voxel_layout:
            # features -> rank -> voxels: the voxel layer starts at the training mean (0)
            self.fuse = nn.Sequential(nn.Dropout(dropout), _factorized(fused, width, self.rank, zero_output=True))
            self.readouts = nn.ModuleDict({name: nn.Linear(width, self.rank) for name in self.decoders})
            self.fmri_head = nn.Identity()
        else:
            self.fuse = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused, width))
            self.readouts = nn.ModuleDict({name: nn.Identity() for name in self.decoders})
            self.fmri_head = _factorized(width, shapes.n_voxels, self.rank, zero_output=True)

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, bottleneck) from the present stimulus modalities: (B, V) in the voxels layout."""
        return self.fuse(torch.cat([self.encoders[name](inputs[name]) for name in self.encoders], dim=1))

    def readout(self, bottleneck: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each decoder's input: (B, rank) projections of the voxel layer (the latent itself otherwise)."""
        return {name: layer(bottleneck) for name, layer in self.readouts.items()}

    def decode_readouts(self, readouts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each stimulus modality's reconstruction from its decoder input (audio codes: logits)."""
        outputs = {}
        for name, decoder in self.decoders.items():
            out = decoder(readouts[name])
            if name == "audio" and self.shapes.audio_is_codes:
                n_q, length = self.shapes.audio
                out = out.view(-1, n_q, CODEBOOK_SIZE, length)
            outputs[name] = out
        return outputs

    def decode(self, bottleneck: torch.Tensor) -> dict[str, torch.Tensor]:
        """``fmri`` (B, V) and every modality's reconstruction from a bottleneck."""
        return {"fmri": self.fmri_head(bottleneck), **self.decode_readouts(self.readout(bottleneck))}

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.decode(self.encode(inputs))


def build_model(shapes: ModalityShapes, model: dict, dropout: float | None = None) -> MultimodalAutoencoder:
    """The autoencoder of a spec's ``model`` section (``dropout`` overrides it: 0 to evaluate)."""
    return MultimodalAutoencoder(shapes, model["bottleneck"], model["hidden"],
                                 model["dropout"] if dropout is None else dropout, model.get("rank"))

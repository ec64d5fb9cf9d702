"""The multimodal autoencoder: stimulus encoders -> bottleneck -> fMRI head + decoders.

Shapes (B = batch):

- video  (B, F, 3, H, W) standardized frames: frames stacked as channels, a strided conv
  encoder; a transposed-conv decoder back to (B, F, 3, H, W). Convolutions keep the
  parameter count independent of the frame size (the lab's fully connected layer on
  432,000 values per TR had 3.5 billion parameters).
- audio  codes (B, n_q, T) int: one embedding table per codebook, summed, a 1-D conv
  encoder; the decoder predicts logits (B, n_q, 1024, T) for a cross-entropy (a squared
  error on code indices would be meaningless). ``mel`` (B, n_mels, T) float: conv
  encoder, MSE decoder.
- text   (B, D) standardized CLIP embedding: MLPs.
- fmri   (B, V): the head maps the bottleneck to voxels; with ``bottleneck: voxels`` the
  bottleneck *is* the voxel layer.

Every present modality is encoded to ``hidden``, the encodings are concatenated and
projected to the bottleneck. The last layer of each decoder and of the fMRI head starts
at zero, so before training every prediction is the training mean (standardized 0) or
the uniform code distribution: the initial normalized losses are known in advance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

CODEBOOK_SIZE = 1024


@dataclass(frozen=True)
class ModalityShapes:
    """Per-sample shapes of each present modality (None when absent)."""

    video: tuple[int, ...] | None  # (F, 3, H, W)
    audio: tuple[int, ...] | None  # (n_q, T) codes or (n_mels, T) mel
    audio_is_codes: bool
    text: tuple[int, ...] | None  # (D,)
    n_voxels: int

    def present(self) -> list[str]:
        return [name for name in ("video", "audio", "text") if getattr(self, name) is not None]


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
    def __init__(self, shape: tuple[int, ...], bottleneck: int):
        super().__init__()
        self.shape = shape
        frames, channels, height, width = shape
        self.grid = (math.ceil(height / 8), math.ceil(width / 8))
        self.project = nn.Linear(bottleneck, 128 * self.grid[0] * self.grid[1])
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
    """(B, bottleneck) -> (B, out_channels, T)."""

    def __init__(self, bottleneck: int, out_channels: int, length: int):
        super().__init__()
        self.length, self.base = length, math.ceil(length / 4)
        self.project = nn.Linear(bottleneck, 128 * self.base)
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


class MultimodalAutoencoder(nn.Module):
    """Encoders -> fused bottleneck -> (fMRI prediction, reconstructed modalities)."""

    def __init__(self, shapes: ModalityShapes, bottleneck: int | str, hidden: int, dropout: float):
        super().__init__()
        self.shapes = shapes
        present = shapes.present()
        if not present:
            raise ValueError("the model needs at least one stimulus modality (video, audio or text)")
        width = shapes.n_voxels if bottleneck == "voxels" else int(bottleneck)
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        if shapes.video is not None:
            self.encoders["video"] = VideoEncoder(shapes.video, hidden)
            self.decoders["video"] = VideoDecoder(shapes.video, width)
        if shapes.audio is not None:
            channels, length = shapes.audio
            if shapes.audio_is_codes:
                self.encoders["audio"] = AudioCodeEncoder(shapes.audio, hidden)
                self.decoders["audio"] = SequenceDecoder(width, channels * CODEBOOK_SIZE, length)
            else:
                self.encoders["audio"] = SequenceEncoder(channels, hidden)
                self.decoders["audio"] = SequenceDecoder(width, channels, length)
        if shapes.text is not None:
            (dim,) = shapes.text
            self.encoders["text"] = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
            self.decoders["text"] = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), _zero_last(nn.Linear(hidden, dim)))
        self.fuse = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * len(present), width))
        self.fmri_head = nn.Identity() if bottleneck == "voxels" else _zero_last(nn.Linear(width, shapes.n_voxels))

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, bottleneck) from the present stimulus modalities."""
        return self.fuse(torch.cat([self.encoders[name](inputs[name]) for name in self.encoders], dim=1))

    def decode(self, bottleneck: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {"fmri": self.fmri_head(bottleneck)}
        for name, decoder in self.decoders.items():
            out = decoder(bottleneck)
            if name == "audio" and self.shapes.audio_is_codes:
                n_q, length = self.shapes.audio
                out = out.view(-1, n_q, CODEBOOK_SIZE, length)  # logits
            outputs[name] = out
        return outputs

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.decode(self.encode(inputs))

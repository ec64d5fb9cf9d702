"""The trained autoencoder as a tool: inputs of TR rows, encode, read out, decode, score.

Units: every array here is in the model's units, each feature standardized with its
saved training mean and std (``loss_stats``; fMRI: every voxel of the z-scored tensor
standardized once more over the training TRs). EnCodec codes stay integers; the audio
decoder gives logits (n, n_q, 1024, T). Scores are the training loss's ``variance``
units whatever the spec trained with: 1 = predicting every feature's training mean (or
each codebook's marginal), the same meaning in every modality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from giblet_kedro.models.autoencoder import MultimodalAutoencoder, build_model
from giblet_kedro.training.data import TrDataset
from giblet_kedro.training.job import TrainJob
from giblet_kedro.training.losses import ModalityStats, per_sample_losses, torch_stats

BATCH = 64


def measured_fmri(job: TrainJob, rows: np.ndarray) -> np.ndarray:
    """(n_subjects, n_rows, V) float32 rows of the z-scored fMRI tensor, with a subject
    axis of 1 in ``cross_subject`` (the subjects' average)."""
    tensor = np.load(job.paths.fmri, mmap_mode="r")
    rows = np.asarray(rows, dtype=np.int64)
    return np.asarray(tensor[rows])[None] if tensor.ndim == 2 else np.asarray(tensor[:, rows])


@dataclass
class TrainedModel:
    """A model with its training job (paths, shapes, statistics)."""

    model: MultimodalAutoencoder
    job: TrainJob

    @classmethod
    def load(cls, job: TrainJob, weights: dict[str, torch.Tensor]) -> TrainedModel:
        model = build_model(job.shapes, job.model, dropout=0.0)
        model.load_state_dict(weights)
        model.eval()
        return cls(model=model, job=job)

    @property
    def stats(self) -> dict[str, ModalityStats]:
        return self.job.stats

    @property
    def modalities(self) -> list[str]:
        return self.job.shapes.present()

    @property
    def voxel_layout(self) -> bool:
        return self.model.voxel_layout

    @property
    def layout(self) -> str:
        """How the model is laid out, as every lesion report states it."""
        if self.voxel_layout:
            return f"voxels: the bottleneck is the voxel layer ({self.job.shapes.n_voxels} units), read by each " \
                   f"decoder through a rank-{self.model.rank} projection"
        return f"latent: a {self.job.model['bottleneck']}-unit latent with an fMRI head on the side"

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Model inputs and targets of the given TR rows (the first subject's fMRI in
        ``per_subject``: the stimulus is the same for every subject)."""
        dataset = TrDataset(self.job.paths, np.asarray(rows), self.job.mode, self.stats, self.job.shapes.audio_is_codes)
        return {key: value.numpy() for key, value in dataset.__getitems__(list(range(len(rows)))).items()}

    def _batched(self, arrays: dict[str, np.ndarray], step) -> dict[str, np.ndarray]:
        """Apply ``step`` (tensors -> dict of tensors) to ``arrays`` in batches."""
        n = len(next(iter(arrays.values())))
        parts: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for start in range(0, n, BATCH):
                out = step({k: torch.from_numpy(np.ascontiguousarray(v[start:start + BATCH])) for k, v in arrays.items()})
                for name, value in out.items():
                    parts.setdefault(name, []).append(value.float().numpy())
        return {name: np.concatenate(values) for name, values in parts.items()}

    def encode(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """(n, bottleneck) float32 from stimulus inputs (as :meth:`batch` gives them):
        the voxel layer in the voxels layout."""
        picked = {name: inputs[name] for name in self.modalities}
        return self._batched(picked, lambda b: {"z": self.model.encode(b)})["z"]

    def encode_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.encode(self.batch(rows))

    def readout(self, bottleneck: np.ndarray) -> dict[str, np.ndarray]:
        """Each decoder's input ((n, rank) projections of the voxel layer)."""
        return self._batched({"z": np.asarray(bottleneck, dtype=np.float32)}, lambda b: self.model.readout(b["z"]))

    def decode_readouts(self, readouts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every stimulus modality's reconstruction from its decoder input."""
        return self._batched({k: np.asarray(v, dtype=np.float32) for k, v in readouts.items()},
                             self.model.decode_readouts)

    def decode(self, bottleneck: np.ndarray) -> dict[str, np.ndarray]:
        """``fmri`` (n, V) and each modality's reconstruction (video (n, F, 3, H, W), audio
        logits or mel, text (n, D))."""
        return self._batched({"z": np.asarray(bottleneck, dtype=np.float32)}, lambda b: self.model.decode(b["z"]))

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The full autoencoder on stimulus inputs: ``decode(encode(inputs))``."""
        return self.decode(self.encode(inputs))

    def encoder_outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each modality's encoder output, (n, hidden) float32, before the layers that
        fuse them."""
        return self._batched({name: inputs[name] for name in self.modalities},
                             lambda b: {name: encoder(b[name]) for name, encoder in self.model.encoders.items()})

    def fmri_from_encoded(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        """(n, V) the predicted fMRI from the encoders' outputs (:meth:`encoder_outputs`).
        Affine in them: the fusing layers and the fMRI head are linear (dropout is off)."""
        def step(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            fused = self.model.fuse(torch.cat([batch[name] for name in self.model.encoders], dim=1))
            return {"fmri": self.model.fmri_head(fused)}

        return self._batched({name: np.asarray(value, dtype=np.float32) for name, value in encoded.items()},
                             step)["fmri"]

    def predict_fmri(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """(n, V) the predicted fMRI in model units: the voxel layer itself in the voxels
        layout, the fMRI head's output on the latent otherwise (no stimulus decoder runs)."""
        z = self.encode(inputs)
        if self.voxel_layout:
            return z
        return self._batched({"z": z}, lambda b: {"fmri": self.model.fmri_head(b["z"])})["fmri"]

    def predict_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return self.predict(self.batch(rows))

    def per_sample_losses(self, outputs: dict[str, np.ndarray], targets: dict[str, np.ndarray],
                          modalities: list[str] | None = None) -> dict[str, np.ndarray]:
        """(n,) loss of each sample per stimulus modality, in ``variance`` units (1 = every
        feature's training mean); invalid samples are NaN."""
        names = [n for n in (modalities or self.modalities) if n in outputs]
        stats = torch_stats({name: self.stats[name] for name in names})
        batch = {key: torch.from_numpy(np.asarray(value)) for key, value in targets.items()}
        losses = per_sample_losses({name: torch.from_numpy(outputs[name]) for name in names}, batch, stats,
                                   "variance", self.job.shapes.audio_is_codes)
        return {name: np.where(targets[f"{name}_valid"].astype(bool), value.double().numpy(), np.nan)
                for name, value in losses.items()}

    def normalized_losses(self, outputs: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
        """Each stimulus modality's mean loss over its valid rows, in ``variance`` units."""
        return {name: float(np.nanmean(value)) for name, value in self.per_sample_losses(outputs, targets).items()
                if np.isfinite(value).any()}

    def fmri_to_model_units(self, fmri: np.ndarray) -> np.ndarray:
        """(..., V) z-scored fMRI -> the voxel layer's units (per-voxel standardized)."""
        return self.stats["fmri"].standardize(fmri)

"""The trained autoencoder as an evaluation tool: predict, encode, decode on TR rows.

Units: every array here is in the model's units, i.e. standardized with the saved loss
statistics (``(x - mean) / std``; fMRI: the z-scored tensor standardized once more by
its training mean/std, a near-identity). EnCodec codes stay integers; the audio decoder
gives logits (n, n_q, 1024, T).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from giblet_kedro.models.autoencoder import MultimodalAutoencoder
from giblet_kedro.training.data import TrDataset
from giblet_kedro.training.ddp import TrainJob
from giblet_kedro.training.losses import ModalityStats, modality_losses

BATCH = 64


@dataclass
class TrainedModel:
    """A model with its training job (paths, shapes, statistics)."""

    model: MultimodalAutoencoder
    job: TrainJob

    @classmethod
    def load(cls, weights: dict[str, torch.Tensor], job: TrainJob) -> TrainedModel:
        model = MultimodalAutoencoder(job.shapes, job.model["bottleneck"], job.model["hidden"], 0.0)
        model.load_state_dict(weights)
        model.eval()
        return cls(model=model, job=job)

    @property
    def stats(self) -> dict[str, ModalityStats]:
        return {name: ModalityStats(**value) for name, value in self.job.stats.items()}

    @property
    def modalities(self) -> list[str]:
        return self.job.shapes.present()

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Model inputs and targets of the given TR rows (the first subject's fMRI in
        ``per_subject``: the stimulus is the same for every subject)."""
        dataset = TrDataset(self.job.paths, np.asarray(rows), self.job.mode, self.stats, self.job.shapes.audio_is_codes)
        return {key: value.numpy() for key, value in dataset.__getitems__(list(range(len(rows)))).items()}

    def encode(self, rows: np.ndarray) -> np.ndarray:
        """(n_rows, bottleneck) float32: the stimulus of each TR, encoded."""
        inputs = self.batch(rows)
        with torch.no_grad():
            return np.concatenate([
                self.model.encode({name: torch.from_numpy(inputs[name][start:start + BATCH])
                                   for name in self.modalities}).numpy()
                for start in range(0, len(rows), BATCH)])

    def decode(self, bottleneck: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs of (n, bottleneck) codes: ``fmri`` (n, V) and each modality's
        reconstruction (video (n, F, 3, H, W), audio logits or mel, text (n, D))."""
        parts: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for start in range(0, len(bottleneck), BATCH):
                out = self.model.decode(torch.from_numpy(np.ascontiguousarray(bottleneck[start:start + BATCH],
                                                                              dtype=np.float32)))
                for name, value in out.items():
                    parts.setdefault(name, []).append(value.float().numpy())
        return {name: np.concatenate(values) for name, values in parts.items()}

    def predict(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The full autoencoder on the stimulus of each row: ``decode(encode(rows))``."""
        return self.decode(self.encode(rows))

    def normalized_losses(self, outputs: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
        """Each stimulus modality's loss in the training loss's normalized units (1 = the
        training mean, or the code marginal), over its valid rows: the training code's
        own :func:`modality_losses`, so evaluation and training cannot disagree."""
        present = [name for name in self.modalities if targets[f"{name}_valid"].any()]
        losses = modality_losses({name: torch.from_numpy(outputs[name]) for name in present},
                                 {key: torch.from_numpy(np.asarray(value)) for key, value in targets.items()},
                                 self.stats, "variance", self.job.shapes.audio_is_codes)
        return {name: float(value) for name, value in losses.items()}

    def fmri_to_model_units(self, fmri: np.ndarray) -> np.ndarray:
        stats = self.stats["fmri"]
        return ((np.asarray(fmri, dtype=np.float32) - stats.mean) / stats.std).astype(np.float32)

"""The trained autoencoder as a tool: inputs of TR rows, encode, read out, decode, score.

Units: every array here is in the model's units, each feature standardized with its
saved training mean and std (``loss_stats``; fMRI: every voxel of the z-scored tensor
standardized once more over the training TRs). EnCodec codes stay integers; the audio
decoder gives logits (n, n_q, 1024, T). Scores are the training loss's ``variance``
units whatever the spec trained with: 1 = predicting every feature's training mean (or
each codebook's marginal), the same meaning in every modality.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from giblet_kedro.models.autoencoder import MultimodalAutoencoder, build_model
from giblet_kedro.training.data import CacheArrays, TrDataset, model_inputs, run_index
from giblet_kedro.training.job import TrainJob
from giblet_kedro.training.losses import ModalityStats, per_sample_losses, torch_stats

BATCH = 64


def measured_fmri(job: TrainJob, rows: np.ndarray) -> np.ndarray:
    """(n_subjects, n_rows, V) float32 rows of the z-scored fMRI tensor, with a subject
    axis of 1 in ``cross_subject`` (the subjects' average)."""
    tensor = np.load(job.paths.fmri, mmap_mode="r")
    rows = np.asarray(rows, dtype=np.int64)
    return np.asarray(tensor[rows])[None] if tensor.ndim == 2 else np.asarray(tensor[:, rows])


Segments = list[tuple[int, int]]  # [start, stop) of each run within a sequence of TRs


@dataclass
class TrainedModel:
    """A model with its training job (paths, shapes, statistics).

    The temporal module reads each TR's context, so the model runs on whole runs: inputs
    are sequences of TRs, cut into ``segments`` (one per run: a TR's context never
    reaches into another run; before a run's first TR there is no stimulus). Methods that
    take TR rows of the experiment run the model on the runs that hold them."""

    model: MultimodalAutoencoder
    job: TrainJob

    @classmethod
    def load(cls, job: TrainJob, weights: dict[str, torch.Tensor]) -> TrainedModel:
        model = build_model(job.shapes, job.model, job.tr, job.n_subjects, dropout=0.0)
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
        """How the model is laid out, as every report states it."""
        temporal = (f"{self.model.temporal_kind} over {self.model.n_lags} TRs of context of a {self.model.channels}-unit code"
                    f"{f', a head for each of {self.job.n_subjects} subjects' if self.job.n_subjects else ''}")
        if self.voxel_layout:
            return f"voxels: the bottleneck is the voxel layer ({self.job.shapes.n_voxels} units), read by each " \
                   f"decoder through a rank-{self.model.rank} projection; temporal: {temporal}"
        return f"latent: a {self.job.model['bottleneck']}-unit latent with an fMRI head on the side; temporal: {temporal}"

    # ------------------------------------------------------------------ rows and runs
    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Targets of the given TR rows (the first subject's fMRI in ``per_subject``: the
        stimulus is the same for every subject), with ``<name>_valid`` flags."""
        dataset = TrDataset(self.job.paths, np.asarray(rows), self.job.mode, self.stats, self.job.shapes.audio_is_codes)
        return {key: value.numpy() for key, value in dataset.__getitems__(list(range(len(rows)))).items()}

    def runs_of(self, rows: np.ndarray) -> tuple[np.ndarray, Segments, np.ndarray]:
        """The whole runs that hold ``rows``: their rows (in order), their segments, and
        where each of ``rows`` sits among them."""
        rows = np.asarray(rows, dtype=np.int64)
        n_rows = int(np.load(self.job.paths.fmri, mmap_mode="r").shape[-2])
        starts = np.asarray(self.job.run_starts, dtype=np.int64)
        stops = np.r_[starts[1:], n_rows]
        runs = np.unique(run_index(starts, n_rows)[rows])
        sequence = np.concatenate([np.arange(starts[r], stops[r]) for r in runs]) if len(runs) else np.zeros(0, int)
        lengths = [int(stops[r] - starts[r]) for r in runs]
        segments = [(int(a), int(a + n)) for a, n in zip(np.cumsum([0, *lengths[:-1]]), lengths, strict=True)]
        return sequence, segments, np.searchsorted(sequence, rows)

    def sequence_inputs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The model's inputs of TR rows (standardized; codes as int64), ``<name>_valid``."""
        return model_inputs(CacheArrays(self.job.paths), self.job.paths, self.stats, np.asarray(rows),
                            self.job.shapes.audio_is_codes)

    # ---------------------------------------------------------------------- running
    def _batched(self, arrays: dict[str, np.ndarray], step) -> dict[str, np.ndarray]:
        """Apply ``step`` (tensors -> dict of tensors) to ``arrays`` in batches of TRs."""
        n = len(next(iter(arrays.values())))
        parts: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for start in range(0, n, BATCH):
                out = step({k: torch.from_numpy(np.ascontiguousarray(v[start:start + BATCH])) for k, v in arrays.items()})
                for name, value in out.items():
                    parts.setdefault(name, []).append(value.float().numpy())
        return {name: np.concatenate(values) for name, values in parts.items()}

    def encoder_outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each modality's per-TR encoder output, (n, hidden) float32, before the temporal
        module."""
        return self._batched({name: inputs[name] for name in self.modalities}, self.model.encode_trs)

    def _over_segments(self, encoded: dict[str, np.ndarray], segments: Segments | None, step) -> np.ndarray:
        """``step`` (per-modality (1, T, hidden) tensors -> (1, T, k)) on each segment of a
        sequence of encoder outputs; (n, k)."""
        n = len(next(iter(encoded.values())))
        parts = []
        with torch.no_grad():
            for start, stop in segments or [(0, n)]:
                window = {name: torch.from_numpy(np.ascontiguousarray(value[start:stop], dtype=np.float32))[None]
                          for name, value in encoded.items()}
                parts.append(step(window)[0].float().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def features_from_encoded(self, encoded: dict[str, np.ndarray], segments: Segments | None = None) -> np.ndarray:
        """(n, channels) the temporal module's output from a sequence of encoder outputs."""
        return self._over_segments(encoded, segments, self.model.features_from_encoded)

    def bottleneck_from_encoded(self, encoded: dict[str, np.ndarray], segments: Segments | None = None
                                ) -> np.ndarray:
        """(n, bottleneck) from a sequence of encoder outputs (:meth:`encoder_outputs`)."""
        return self._over_segments(encoded, segments, self.model.bottleneck_from_encoded)

    def fmri_from_encoded(self, encoded: dict[str, np.ndarray], segments: Segments | None = None) -> np.ndarray:
        """(n, V) the predicted fMRI (the average brain) from a sequence of encoder outputs.
        Affine in them when the temporal module is linear (dropout is off)."""
        bottleneck = self.bottleneck_from_encoded(encoded, segments)
        if self.voxel_layout:
            return bottleneck
        return self._batched({"z": bottleneck}, lambda b: {"fmri": self.model.fmri_head(b["z"])})["fmri"]

    def encode(self, inputs: dict[str, np.ndarray], segments: Segments | None = None) -> np.ndarray:
        """(n, bottleneck) float32 from a sequence of stimulus inputs (one run unless
        ``segments`` says otherwise): the voxel layer in the voxels layout."""
        return self.bottleneck_from_encoded(self.encoder_outputs(inputs), segments)

    def predict_fmri(self, inputs: dict[str, np.ndarray], segments: Segments | None = None) -> np.ndarray:
        """(n, V) the predicted fMRI in model units (the average brain) from a sequence of
        inputs: the voxel layer itself in the voxels layout, the fMRI head's output on the
        latent otherwise (no stimulus decoder runs)."""
        return self.fmri_from_encoded(self.encoder_outputs(inputs), segments)

    def readout(self, bottleneck: np.ndarray) -> dict[str, np.ndarray]:
        """Each decoder's input ((n, rank) projections of the voxel layer)."""
        return self._batched({"z": np.asarray(bottleneck, dtype=np.float32)}, lambda b: self.model.readout(b["z"]))

    def decode_readouts(self, readouts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every stimulus modality's reconstruction from its decoder input."""
        return self._batched({k: np.asarray(v, dtype=np.float32) for k, v in readouts.items()},
                             self.model.decode_readouts)

    def decode(self, bottleneck: np.ndarray) -> dict[str, np.ndarray]:
        """``fmri`` (n, V) and each modality's reconstruction (video (n, F, 3, H, W), audio
        logits or mel, text (n, D)) from the bottleneck of each TR."""
        return self._batched({"z": np.asarray(bottleneck, dtype=np.float32)}, lambda b: self.model.decode(b["z"]))

    def predict(self, inputs: dict[str, np.ndarray], segments: Segments | None = None) -> dict[str, np.ndarray]:
        """The full autoencoder on a sequence of stimulus inputs: ``decode(encode(inputs))``."""
        return self.decode(self.encode(inputs, segments))

    # ------------------------------------------------------------- on the experiment
    def encode_rows(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), bottleneck) of the experiment's TR rows, each with its run's context."""
        sequence, segments, where = self.runs_of(rows)
        return self.encode(self.sequence_inputs(sequence), segments)[where]

    def predict_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Every output at the experiment's TR rows: ``fmri`` (the average brain) and each
        modality's reconstruction."""
        return self.decode(self.encode_rows(rows))

    def predict_fmri_rows(self, rows: np.ndarray, shift: int = 0) -> np.ndarray:
        """(len(rows), V) the predicted fMRI at TR rows; ``shift``: the stimulus of ``rows``
        circularly shifted among themselves by that many TRs first (row ``i`` takes row
        ``i - shift``'s), the rest of each run as it is."""
        sequence, segments, where = self.runs_of(rows)
        inputs = self.sequence_inputs(sequence)
        if shift:
            for name in self.modalities:
                for key in (name, f"{name}_valid"):
                    inputs[key][where] = np.roll(inputs[key][where], shift, axis=0)
        return self.predict_fmri(inputs, segments)[where]

    def shifted_fmri_rows(self, rows: np.ndarray, shifts: list[int]) -> Iterator[np.ndarray]:
        """:meth:`predict_fmri_rows` at each of ``shifts``, (len(rows), V) each, with the
        stimulus encoded once: the encoders read one TR at a time, so shifting their
        inputs among ``rows`` shifts their outputs. Per shift only the temporal module runs
        again over the runs, and the voxel layer (or fMRI head) on ``rows`` alone."""
        sequence, segments, where = self.runs_of(rows)
        encoded = self.encoder_outputs(self.sequence_inputs(sequence))
        for shift in shifts:
            moved = {}
            for name, value in encoded.items():
                moved[name] = value.copy()
                moved[name][where] = np.roll(value[where], shift, axis=0)
            components = self._over_segments(moved, segments, self.model.components_from_encoded)[where]
            yield self._batched({"components": components},
                                lambda batch: {"fmri": self.model.fmri_from_components(batch["components"])})["fmri"]

    def subject_fmri_rows(self, rows: np.ndarray) -> np.ndarray:
        """(S, len(rows), V) each subject's predicted fMRI at TR rows through its head
        (``per_subject`` with heads); the average brain, (1, n, V), without heads."""
        sequence, segments, where = self.runs_of(rows)
        encoded = self.encoder_outputs(self.sequence_inputs(sequence))
        average = self.fmri_from_encoded(encoded, segments)[where]
        if self.model.heads is None:
            return average[None]
        features = self.features_from_encoded(encoded, segments)[where]
        with torch.no_grad():
            out = [self.model.heads(torch.from_numpy(average)[None], torch.from_numpy(features)[None],
                                    torch.tensor([subject]))[0].numpy()
                   for subject in range(self.job.n_subjects)]
        return np.stack(out)

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


def ensemble_fmri(first: dict[str, np.ndarray], others: list[TrainedModel], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The seeds' ensemble (``train.seeds``) at TR rows, from the first model's
    predictions (``fmri`` (n, V); ``subjects_fmri`` (S, n, V) with heads) and the other
    models: ``seed_fmri`` (n_models, n, V) each model's predicted fMRI, ``fmri`` their
    mean, model units; with heads, ``subjects_fmri`` the mean of each model's heads."""
    each = np.stack([first["fmri"], *(trained.predict_fmri_rows(rows) for trained in others)])
    out = {"seed_fmri": each, "fmri": each.mean(axis=0)}
    if "subjects_fmri" in first:
        out["subjects_fmri"] = np.mean([first["subjects_fmri"], *(trained.subject_fmri_rows(rows) for trained in others)],
                                       axis=0)
    return out

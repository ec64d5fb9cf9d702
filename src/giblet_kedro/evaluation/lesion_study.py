"""A lesion study: silence each named region of the voxel layer, decode the test TRs'
stimulus from what is left, and compare the damage with random regions of the same size.

The voxel layer on the test TRs comes from ``lesion.source``: the encoders' output on
the test stimulus (``model``), or measured fMRI in the layer's units (``brain``). With a
latent bottleneck there is no voxel layer; measured fMRI reaches the latent through a
ridge read-out, and the report says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from giblet_kedro.evaluation.lesion import (
    BrainReadout,
    LayerProjection,
    add_fdr,
    bootstrap_block,
    fill_values,
    lesion_statistics,
    random_regions,
)
from giblet_kedro.evaluation.model import TrainedModel, measured_fmri
from giblet_kedro.evaluation.reconstruction import reconstruction_metrics
from giblet_kedro.progress import progress
from giblet_kedro.training.losses import per_sample_losses, torch_stats

log = logging.getLogger(__name__)
READOUT_ALPHAS = np.logspace(-1, 6, 15)
REGION_BATCH = 256  # decoded samples per forward pass of the random regions


@dataclass
class LesionSetup:
    """What a lesion acts on, on the test TRs.

    layer : (n_test, V) the voxel layer (model units); training_mean : (V,) its mean over
    the training TRs; projection : the linear step to each decoder's input; targets : the
    test TRs' stimulus (model units, as :meth:`TrainedModel.batch` gives them).
    """

    trained: TrainedModel
    layer: np.ndarray
    training_mean: np.ndarray
    projection: LayerProjection
    targets: dict[str, np.ndarray]
    source: str
    readout: dict[str, Any]

    def decode(self, decoder_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.trained.decode_readouts(decoder_inputs)

    def losses(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """(n_test,) loss of each TR per modality (NaN where the stimulus is padding)."""
        return self.trained.per_sample_losses(outputs, self.targets)

    def mean_effects(self, intact_inputs: dict[str, np.ndarray], intact_losses: dict[str, np.ndarray],
                     regions: list[np.ndarray], method: str, rng: np.random.Generator) -> list[dict[str, float]]:
        """Each region's mean loss increase per modality, computed in torch in batches of
        regions (no decoded output leaves the model: a thousand regions stay affordable)."""
        modalities = list(intact_losses)
        stats = torch_stats({m: self.trained.stats[m] for m in modalities})
        targets = {k: torch.from_numpy(np.asarray(v)) for k, v in self.targets.items()}
        valid = {m: np.isfinite(intact_losses[m]) for m in modalities}
        n = self.layer.shape[0]
        group = max(1, REGION_BATCH // max(n, 1))
        out: list[dict[str, float]] = []
        with torch.inference_mode(), progress("lesions", len(regions), "regions") as advance:
            for first in range(0, len(regions), group):
                part = regions[first:first + group]
                inputs = {m: np.concatenate([self.projection.lesioned(intact_inputs, self.layer, voxels,
                                                                      fill_values(method, self.layer,
                                                                                  self.training_mean, voxels, rng))[m]
                                             for voxels in part]) for m in self.projection.weights}
                outputs = self.trained.model.decode_readouts({m: torch.from_numpy(v) for m, v in inputs.items()})
                tiled = {k: v.repeat(len(part), *([1] * (v.ndim - 1))) for k, v in targets.items()}
                losses = per_sample_losses({m: outputs[m] for m in modalities}, tiled, stats, "variance",
                                           self.trained.job.shapes.audio_is_codes)
                for k in range(len(part)):
                    rows = slice(k * n, (k + 1) * n)
                    out.append({m: float((losses[m][rows].double().numpy() - intact_losses[m])[valid[m]].mean())
                                for m in modalities})
                advance(len(part))
        return out


def resolve_source(source: str, voxel_layout: bool) -> str:
    return ("model" if voxel_layout else "brain") if source == "auto" else source


def setup_lesions(trained: TrainedModel, source: str) -> LesionSetup:
    """The voxel layer, its training mean and the projections to the decoders."""
    job = trained.job
    train_rows, test_rows = np.asarray(job.train_rows), np.asarray(job.test_rows)
    targets = trained.batch(test_rows)
    source = resolve_source(source, trained.voxel_layout)

    def brain(rows: np.ndarray) -> np.ndarray:  # the subjects' mean in per_subject
        return trained.fmri_to_model_units(measured_fmri(job, rows).mean(0))

    if trained.voxel_layout:
        if source == "model":
            layer, training_mean = trained.encode_rows(test_rows), trained.encode_rows(train_rows).mean(0)
        else:
            layer, training_mean = brain(test_rows), brain(train_rows).mean(0)
        weights = {m: layer_.weight.detach().numpy().T.copy() for m, layer_ in trained.model.readouts.items()}
        biases = {m: layer_.bias.detach().numpy().copy() for m, layer_ in trained.model.readouts.items()}
        readout = {"kind": f"the voxel layer itself, read by each decoder's rank-{trained.model.rank} projection"}
    else:
        if source != "brain":
            raise ValueError("a latent bottleneck has no voxel layer to lesion; use lesion.source: brain")
        measured_train = brain(train_rows)
        fit = BrainReadout.fit(measured_train, trained.encode_rows(train_rows), READOUT_ALPHAS)
        layer, training_mean = brain(test_rows), measured_train.mean(0)
        weights = {m: fit.coef for m in trained.model.decoders}
        biases = {m: fit.intercept for m in trained.model.decoders}
        readout = {"kind": "ridge regression, measured fMRI -> latent (fit on the training TRs)", "alpha": fit.alpha}
    return LesionSetup(trained=trained, layer=layer.astype(np.float32), training_mean=training_mean.astype(np.float32),
                       projection=LayerProjection(weights, biases), targets=targets, source=source, readout=readout)


def most_affected(effects: dict[str, dict]) -> str:
    """The modality whose loss the lesion raises most beyond the random regions' median:
    silencing any voxels costs some decoders more than others, which the control measures."""
    return max(effects, key=lambda m: effects[m]["effect"] - effects[m]["random_q05_q50_q95"][1])


def run_study(setup: LesionSetup, regions: dict[str, np.ndarray], coordinates: np.ndarray, method: str,
              n_random: int, n_boot: int, fdr: float, rng: np.random.Generator
              ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Each named region's effect on every modality against ``n_random`` random regions.

    regions : name -> (V,) bool; coordinates : (V, 3) voxel indices of the mask voxels.

    Returns the per-region report (effects, 95% intervals, permutation p, FDR, and
    ``alone``: the reconstruction from the region by itself, every other voxel silenced
    the same way) and the decoded outputs: ``intact``, each region's lesion (by its
    name) and each region alone (``only_<name>``), modality -> array.
    """
    intact_inputs = setup.projection(setup.layer)
    intact = setup.decode(intact_inputs)
    intact_losses = setup.losses(intact)
    block = bootstrap_block(setup.trained.job.tr)

    def effect_of(voxels: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        fill = fill_values(method, setup.layer, setup.training_mean, voxels, rng)
        outputs = setup.decode(setup.projection.lesioned(intact_inputs, setup.layer, voxels, fill))
        losses = setup.losses(outputs)
        return {m: losses[m] - intact_losses[m] for m in losses}, outputs

    report: dict[str, Any] = {}
    decoded = {"intact": intact}
    for name, mask in regions.items():
        voxels = np.flatnonzero(mask)
        per_tr, outputs = effect_of(voxels)
        controls = random_regions(coordinates, voxels.size, n_random, rng, exclude=mask)
        randoms = setup.mean_effects(intact_inputs, intact_losses, controls, method, rng)
        effects = lesion_statistics(per_tr, randoms, block, n_boot, rng)
        report[name] = {"voxels": int(voxels.size), "effects": effects,
                        "most_affected": most_affected(effects)}
        decoded[name] = outputs
        log.info("lesion %s (%d voxels): %s", name, voxels.size,
                 {m: f"{e['effect']:+.4f} (p {e['p']:.3f})" for m, e in effects.items()})
        # what the region "sees": decoded with only the region kept (everything else silenced)
        rest = np.flatnonzero(~mask)
        alone = setup.decode(setup.projection.lesioned(intact_inputs, setup.layer, rest,
                                                       fill_values(method, setup.layer, setup.training_mean, rest,
                                                                   rng)))
        report[name]["alone"] = reconstruction_metrics(setup.trained, alone, setup.targets)
        decoded[f"only_{name}"] = alone
    add_fdr(report, fdr)
    return report, decoded

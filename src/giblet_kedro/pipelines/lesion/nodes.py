"""Lesion nodes: silence regions of the voxel layer on the test TRs, decode the stimulus
from what is left, and compare each region with random regions of its size.

Wiring over :mod:`giblet_kedro.evaluation.lesion_study`. Every report states the model's
layout and where the voxel layer came from.
"""

from __future__ import annotations

import logging
from typing import Any

import nibabel as nib
import numpy as np
import torch

from giblet_kedro.evaluation.decoded import argmax_codes, decoded_audio, nearest_annotations
from giblet_kedro.evaluation.lesion import region_voxels
from giblet_kedro.evaluation.lesion_study import run_study, setup_lesions
from giblet_kedro.evaluation.model import TrainedModel
from giblet_kedro.spec.schema import LesionSpec, StimulusSpec
from giblet_kedro.training.job import TrainJob
from giblet_kedro.training.selection import weights_kept

log = logging.getLogger(__name__)
SHOWN_TRS = 8


def run_lesions(train_job: dict[str, Any], model_checkpoint: dict[str, torch.Tensor], training_history: dict,
                norm_stats: dict[str, np.ndarray], region_images: dict[str, nib.Nifti1Image],
                lesion: LesionSpec | None, stimulus: StimulusSpec | None
                ) -> tuple[dict, dict[str, np.ndarray], str, dict[str, np.ndarray]]:
    """Decode the test TRs' stimulus from the voxel layer, intact and with each region
    silenced, against ``lesion.random_regions`` random regions of each region's size.

    Returns the report (JSON), decoded samples for the pictures (npz), the decoded text
    as the nearest annotation (Markdown) and the decoded audio (EnCodec's decoder; the
    true codes too, resynthesized the same way, for comparison).
    """
    job = TrainJob.from_dict(train_job)
    if lesion is None:  # in the default pipeline; `kedro run --pipelines=lesion` refuses this before any node
        log.warning("experiment %r has no 'lesion' section: no lesions run", job.experiment)
        return ({"experiment": job.experiment, "skipped": "the spec has no 'lesion' section", "regions": {}},
                {}, f"# Decoded text: {job.experiment}\n\nNo lesion section in the spec.\n", {})
    trained = TrainedModel.load(job, model_checkpoint)
    mask = np.asarray(norm_stats["mask"], dtype=bool)
    regions = {name: region_voxels(region_images[name], region.labels, mask, norm_stats["affine"],
                                   f"lesion.regions.{name}") for name, region in lesion.regions.items()}
    setup = setup_lesions(trained, lesion.source)
    rng = np.random.default_rng(lesion.seed)
    effects, decoded = run_study(setup, regions, np.argwhere(mask), lesion.method, lesion.random_regions,
                                 lesion.bootstrap, lesion.fdr, rng)
    from_stimulus = trained.normalized_losses(trained.predict_rows(np.asarray(job.test_rows)), setup.targets)
    report = {
        "experiment": job.experiment, "layout": trained.layout, "source": setup.source, "readout": setup.readout,
        "method": lesion.method, "test_trs": len(job.test_rows), "weights": weights_kept(training_history),
        "units": "rise of each modality's normalized loss (1 = predicting every feature's training mean)",
        "random_regions": {"count": lesion.random_regions, "kind": "contiguous, same size, outside the region"},
        "statistics": {"p": "permutation: (1 + #random >= effect) / (1 + random regions)",
                       "fdr": f"Benjamini-Hochberg at {lesion.fdr} across every region and modality",
                       "ci95": f"circular-block bootstrap over test TRs, {lesion.bootstrap} resamples"},
        "intact": {"normalized_loss": {m: float(np.nanmean(v)) for m, v in setup.losses(decoded["intact"]).items()}},
        "from_stimulus": {"normalized_loss": from_stimulus},
        "regions": effects,
    }
    return (report, *_pictures(job, trained, setup.targets, decoded, stimulus))


def _pictures(job: TrainJob, trained: TrainedModel, targets: dict[str, np.ndarray],
              decoded: dict[str, dict[str, np.ndarray]], stimulus: StimulusSpec | None
              ) -> tuple[dict[str, np.ndarray], str, dict[str, np.ndarray]]:
    """Frames, the nearest annotations and WAVs of the intact and lesioned decodings."""
    rows = np.asarray(job.test_rows)
    shown = np.linspace(0, len(rows) - 1, min(SHOWN_TRS, len(rows))).round().astype(int)
    label = {key: _label(key) for key in decoded}
    frames: dict[str, np.ndarray] = {"rows": rows[shown]}
    if "video" in trained.modalities:
        frames["video_true"] = targets["video"][shown]
        frames |= {f"video_{_file_key(k)}": out["video"][shown] for k, out in decoded.items()}
    text = f"# Decoded text: {job.experiment}\n\nNo text modality in this experiment.\n"
    if "text" in trained.modalities and stimulus is not None and stimulus.text is not None:
        text = nearest_annotations({label[k]: out["text"][shown] for k, out in decoded.items()},
                                   targets["text"][shown], trained, rows[shown], stimulus, job.seed, job.experiment)
    codes = {"true": targets.get("audio")} | {_file_key(k): argmax_codes(out) for k, out in decoded.items()}
    valid = targets.get("audio_valid", np.zeros(0, bool)).astype(bool)
    return frames, text, decoded_audio(codes, valid, trained, stimulus, job.seed)


def _label(key: str) -> str:
    """A decoding's caption: ``intact``, ``lesion <region>`` or ``<region> alone``."""
    if key == "intact":
        return key
    return f"{key.removeprefix('only_')} alone" if key.startswith("only_") else f"lesion {key}"


def _file_key(key: str) -> str:
    """A decoding's name in the npz and WAV files: ``intact``, ``lesion_<region>``, ``only_<region>``."""
    return key if key == "intact" or key.startswith("only_") else f"lesion_{key}"

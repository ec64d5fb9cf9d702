"""Stimulus stage nodes: movie -> TR-aligned video, audio and text -> HRF -> features.

A modality the spec leaves out yields an explicit empty cache (zero-width values, every
TR invalid, ``meta["absent"] = True``), so later stages drop it instead of guessing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from giblet_kedro.spec.schema import (
    ArrayFeatureSpec,
    FmriSpec,
    StimulusSpec,
    TableFeatureSpec,
    TextGridFeatureSpec,
    run_onsets,
)
from giblet_kedro.stimulus.aligned import TrAligned, TrGrid, grid_report
from giblet_kedro.stimulus.audio import extract_audio
from giblet_kedro.stimulus.features import (
    array_features,
    read_array,
    read_textgrid,
    table_features,
    word_rate,
)
from giblet_kedro.stimulus.model_input import apply_hrf as hrf_step
from giblet_kedro.stimulus.model_input import extraction_device
from giblet_kedro.stimulus.text import extract_text
from giblet_kedro.stimulus.video import extract_frames

log = logging.getLogger(__name__)


def _grid(split: pd.DataFrame, fmri: FmriSpec, stimulus: StimulusSpec) -> TrGrid:
    return TrGrid.from_split(split, fmri.tr, run_onsets(fmri, stimulus))


def _device(stimulus: StimulusSpec) -> str:
    return extraction_device(stimulus.device)


def _absent(modality: str, grid: TrGrid) -> TrAligned:
    log.info("stimulus: no %s in the spec; writing an empty %s cache", modality, modality)
    return TrAligned(values=np.zeros((grid.n_trs, 0), np.float32), valid=np.zeros(grid.n_trs, bool),
                     meta={"modality": modality, "absent": True, "grid": grid.describe(), "notes": []})


def _modality(split: pd.DataFrame, fmri: FmriSpec, stimulus: StimulusSpec | None, name: str):
    """(the modality's spec or None, the TR grid, the stimulus spec)."""
    stimulus = stimulus or StimulusSpec()
    return getattr(stimulus, name), _grid(split, fmri, stimulus), stimulus


def extract_video_frames(split: pd.DataFrame, fmri: FmriSpec, stimulus: StimulusSpec | None) -> TrAligned:
    """Frames of the movie on the TR grid: (n_trs, frames_per_tr, 3, H, W) uint8 RGB (the
    HRF step makes them float32 in [0, 1])."""
    video, grid, _ = _modality(split, fmri, stimulus, "video")
    if video is None:
        return _absent("video", grid)
    return extract_frames(Path(video.path), grid, tuple(video.size), video.frames_per_tr)


def extract_audio_codes(split: pd.DataFrame, fmri: FmriSpec, stimulus: StimulusSpec | None,
                        experiment: dict[str, Any]) -> TrAligned:
    """The soundtrack on the TR grid: EnCodec codes (n_trs, n_codebooks, 112) or log-mel."""
    audio, grid, stimulus = _modality(split, fmri, stimulus, "audio")
    if audio is None:
        return _absent("audio", grid)
    return extract_audio(Path(audio.path), grid, audio.model, audio.bandwidth, audio.weights,
                         seed=int(experiment["seed"]), chunk_s=audio.chunk_s, device=_device(stimulus))


def extract_text_embeddings(split: pd.DataFrame, fmri: FmriSpec, stimulus: StimulusSpec | None,
                            experiment: dict[str, Any]) -> TrAligned:
    """Scene annotations on the TR grid: mean CLIP embedding of overlapping segments."""
    text, grid, stimulus = _modality(split, fmri, stimulus, "text")
    if text is None:
        return _absent("text", grid)
    return extract_text(Path(text.annotations), grid, text.start, text.end, list(text.columns), text.model,
                        text.weights, seed=int(experiment["seed"]), run_onsets_s=text.run_onsets_s,
                        batch_size=text.batch_size, device=_device(stimulus))


def _one_feature(name: str, feature, grid: TrGrid) -> tuple[np.ndarray, np.ndarray, list[str]]:
    label = f"stimulus.features.{name}"
    if isinstance(feature, TableFeatureSpec):
        return table_features(Path(feature.table), feature.start, feature.end, dict(feature.columns), grid, label,
                              feature.run_onsets_s)
    if isinstance(feature, TextGridFeatureSpec):
        values, valid = word_rate(read_textgrid(Path(feature.textgrid), feature.tier, label), list(feature.skip),
                                  feature.onset_s, grid)
        return values, valid, ["words per second"]
    assert isinstance(feature, ArrayFeatureSpec)
    samples, times, names = read_array(Path(feature.path), label, feature.key, feature.timestamps)
    if times is None:
        times = feature.onset_s + np.arange(samples.shape[0]) / feature.rate_hz
    else:
        times = times + feature.onset_s
    values, valid = array_features(samples, times, grid, label)
    return values, valid, names


def extract_features(split: pd.DataFrame, fmri: FmriSpec, stimulus: StimulusSpec | None) -> TrAligned:
    """The spec's ``stimulus.features`` on the TR grid, side by side: (n_trs, n_features)
    float32, in spec order; a TR is valid where every feature covers it. ``meta["columns"]``
    names each column ``<feature>:<column>``."""
    stimulus = stimulus or StimulusSpec()
    grid = _grid(split, fmri, stimulus)
    if not stimulus.features:
        return _absent("features", grid)
    blocks, valids, columns, notes = [], [], [], []
    for name, feature in stimulus.features.items():
        values, valid, names = _one_feature(name, feature, grid)
        blocks.append(values)
        valids.append(valid)
        columns += [f"{name}:{column}" for column in names]
        if (~valid).any():
            notes.append(f"features.{name}: {int((~valid).sum())} of {grid.n_trs} TRs are not covered; "
                         "they are zero and marked invalid")
            log.warning(notes[-1])
    return TrAligned(values=np.concatenate(blocks, axis=1), valid=np.logical_and.reduce(valids), meta={
        "modality": "features", "grid": grid.describe(), "columns": columns,
        "sources": {name: feature.model_dump(mode="json") for name, feature in stimulus.features.items()},
        "units": "as given (annotation values, category shares of the TR, array means, words per second)",
        "layout": "(n_trs, n_features)", "forward_fill": False, "notes": notes})


def apply_hrf(aligned: TrAligned, stimulus: StimulusSpec | None) -> TrAligned:
    """The spec's ``stimulus.hrf`` applied to one modality (see
    :func:`giblet_kedro.stimulus.model_input.apply_hrf`)."""
    return hrf_step(aligned, (stimulus or StimulusSpec()).hrf)


def check_stimulus_alignment(split: pd.DataFrame, video: TrAligned, audio: TrAligned, text: TrAligned,
                             features: TrAligned) -> tuple[dict[str, Any], dict[str, TrAligned]]:
    """The HRF-aligned modalities on the fMRI TR grid (raises on any mismatch): the report,
    and the modalities by name (the decoders' targets and the ridge's features)."""
    modalities = {"video": video, "audio": audio, "text": text, "features": features}
    return grid_report(split, modalities), modalities


def collect_model_inputs(split: pd.DataFrame, video: TrAligned, audio: TrAligned, text: TrAligned,
                         features: TrAligned) -> dict[str, TrAligned]:
    """Each TR's features as extracted, before the HRF step, on the fMRI TR grid: what the
    model reads (it learns the lags itself)."""
    modalities = {"video": video, "audio": audio, "text": text, "features": features}
    grid_report(split, modalities)
    return modalities

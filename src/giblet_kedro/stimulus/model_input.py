"""Extracted features made model inputs: the HRF step, and where the extractors run.

Shared by the stimulus stage (the training movie) and the in-silico stage (any new
movie), so both give the model the same inputs for the same frames and sound.
"""

from __future__ import annotations

import numpy as np
import torch

from giblet_kedro.errors import InputDataError
from giblet_kedro.spec.schema import HrfSpec
from giblet_kedro.stimulus import hrf
from giblet_kedro.stimulus.aligned import TrAligned, run_segments
from giblet_kedro.stimulus.video import to_unit_range


def extraction_device(choice: str) -> str:
    """``stimulus.device`` (auto, cpu, cuda) as a torch device name."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputDataError("stimulus.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return choice


def apply_hrf(aligned: TrAligned, settings: HrfSpec) -> TrAligned:
    """Continuous features: causal convolution with the canonical HRF integrated over each
    TR window (``glover``/``spm``) or a shift by ``delay_s`` (``none``). Integer codes:
    never convolved; shifted by the kernel's peak lag (``glover``/``spm``) or by
    ``delay_s`` (``none``). Each run on its own: nothing carries over from one run into
    the next (the scanner was off in between)."""
    tr = float(aligned.meta["grid"]["tr"])
    values, valid = np.asarray(aligned.values), np.asarray(aligned.valid)
    segments = run_segments(aligned.meta["grid"])
    if aligned.meta.get("absent") or values.size == 0:
        return TrAligned(values=values, valid=valid, meta={**aligned.meta, "hrf": "none (absent)"})
    meta = dict(aligned.meta)
    frames = meta.get("modality") == "video" and values.dtype == np.uint8  # stored compact; the model reads [0, 1]
    if frames:
        meta["units"] = "RGB in [0, 1]"
    if frames and settings.kind == "none":
        values = to_unit_range(values)
    if settings.kind == "none" or (np.issubdtype(values.dtype, np.integer) and not frames):
        lag = (int(round(settings.delay_s / tr)) if settings.kind == "none"
               else hrf.peak_lag_trs(settings.kind, tr, settings.slice_time_ref))
        parts = [hrf.shift(values[rows], valid[rows], lag) for rows in segments]
        values = np.concatenate([p[0] for p in parts])
        valid = np.concatenate([p[1] for p in parts])
        applied = f"shift by {lag} TRs"
        if settings.kind != "none":
            applied += (f" (integer codes are not convolved: delayed by the {settings.kind} HRF's peak lag, "
                        f"volumes at {settings.slice_time_ref:g} of their TR)")
    else:
        scale = 1.0 / 255.0 if frames else 1.0  # uint8 frames: [0, 1] block by block, never a whole float copy
        parts = [hrf.convolve(values[rows], settings.kind, tr, settings.slice_time_ref, scale) for rows in segments]
        values = parts[0] if len(parts) == 1 else np.concatenate(parts)
        applied = (f"causal convolution with nilearn's {settings.kind} HRF integrated over each TR window, "
                   f"volumes at {settings.slice_time_ref:g} of their TR")
    if len(segments) > 1:
        applied += f", each of the {len(segments)} runs on its own"
    return TrAligned(values=values, valid=valid, meta={**meta, "hrf": applied})

"""Haemodynamic response: causal convolution of continuous features, or a plain shift.

``glover`` and ``spm`` use nilearn's canonical HRFs sampled at the TR; the response at
TR ``i`` depends on stimulus at TRs ``<= i`` only (``scipy.signal.lfilter``), so
features never lead the stimulus. TRs before the crop count as silence.

Integer EnCodec codes are never convolved (a weighted sum of code indices is
meaningless): with ``glover``/``spm`` they are delayed by the HRF's peak time (rounded
to whole TRs, 4 TRs at 1.5 s), so the codes a TR sees are the sound that drives its
BOLD response; with ``none`` codes, like every feature, are shifted later by
``delay_s``. (Without the delay the model saw each TR's own sound, ~5 s before the
auditory response it had to predict, and auditory voxels were unpredictable: held-out
r 0.05 against a noise ceiling of 0.6 on the demo.)
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

KERNEL_SECONDS = 32.0


def hrf_kernel(kind: str, tr: float) -> np.ndarray:
    """The canonical HRF sampled every ``tr`` seconds from t = 0, scaled to unit peak."""
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf, spm_hrf

    make = {"glover": glover_hrf, "spm": spm_hrf}[kind]
    kernel = np.asarray(make(tr, oversampling=1, time_length=KERNEL_SECONDS), dtype=np.float64)
    return kernel / kernel.max()


def peak_lag_s(kind: str, tr: float) -> float:
    """Seconds from stimulus to the sampled HRF's peak (a whole number of TRs)."""
    return float(np.argmax(hrf_kernel(kind, tr))) * tr


def convolve(values: np.ndarray, kind: str, tr: float) -> np.ndarray:
    """Causal convolution along axis 0 (TRs) of (n_trs, ...) features."""
    return lfilter(hrf_kernel(kind, tr), [1.0], values.astype(np.float64), axis=0).astype(np.float32)


def shift(values: np.ndarray, valid: np.ndarray, delay_s: float, tr: float) -> tuple[np.ndarray, np.ndarray]:
    """Delay (n_trs, ...) rows by ``round(delay_s / tr)`` TRs; the first rows become zero/invalid."""
    lag = int(round(delay_s / tr))
    if lag == 0:
        return values, valid
    shifted = np.zeros_like(values)
    shifted_valid = np.zeros_like(valid)
    if lag < len(values):
        shifted[lag:], shifted_valid[lag:] = values[:-lag], valid[:-lag]
    return shifted, shifted_valid

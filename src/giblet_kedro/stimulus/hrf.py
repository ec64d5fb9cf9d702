"""Haemodynamic response: causal convolution of continuous features, or a plain shift.

A feature on the TR grid is the mean of the stimulus over its TR's window
``[i tr, (i + 1) tr)``; volume ``j`` is the BOLD signal at ``(j + ref) tr``, where
``ref`` (``hrf.slice_time_ref``, fMRIPrep's default 0.5) places the volume inside its
TR. A window-mean feature held over window ``i`` therefore reaches volume ``i + d``
through the kernel

    k[d] = integral of h(u) du over u in ((d + ref - 1) tr, (d + ref) tr]

with ``h`` nilearn's canonical HRF on its oversampled grid (``glover`` or ``spm``,
oversampling 50: peak at 5.04 s). Sampling ``h`` once per TR instead
(``glover_hrf(tr, oversampling=1)``) is wrong twice: nilearn then spreads 21 samples
over 32 s (1.6 s apart, not 1.5) and shifts the gamma by one whole sample, so the
kernel peaked at 6.0 s and every convolved feature came one TR late. The kernel sums to
1: a feature held constant keeps its value.

Integer EnCodec codes are never convolved (a weighted sum of code indices is
meaningless): with ``glover``/``spm`` they are delayed by the kernel's peak lag, in whole
TRs (3 TRs at 1.5 s), so the codes a TR sees are the sound that drives its BOLD
response; with ``none`` codes, like every feature, are shifted later by ``delay_s``.
The response at TR ``i`` depends on stimulus at TRs ``<= i`` only, and TRs before the
crop count as silence.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

KERNEL_SECONDS = 32.0
OVERSAMPLING = 50  # nilearn's own default


def oversampled_hrf(kind: str, tr: float) -> tuple[np.ndarray, np.ndarray]:
    """nilearn's canonical HRF on its own oversampled grid: (times s, mass per sample),
    the mass summing to 1."""
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf, spm_hrf

    make = {"glover": glover_hrf, "spm": spm_hrf}[kind]
    mass = np.asarray(make(tr, oversampling=OVERSAMPLING, time_length=KERNEL_SECONDS), dtype=np.float64)
    times = np.linspace(0.0, KERNEL_SECONDS, mass.size)  # nilearn's grid: a linspace over time_length
    return times, mass / mass.sum()


def hrf_kernel(kind: str, tr: float, slice_time_ref: float = 0.5) -> np.ndarray:
    """(n_lags,) the response of volume ``i + d`` to a unit feature over TR window ``i``.

    Each lag integrates the oversampled HRF over its own TR window (see the module
    docstring); sums to 1 over the kernel's 32 s.
    """
    times, mass = oversampled_hrf(kind, tr)
    step = times[1] - times[0]
    edges = np.concatenate([[times[0] - step / 2], times + step / 2])
    cumulative = np.concatenate([[0.0], np.cumsum(mass)])  # the HRF's mass before each edge

    def mass_before(u: np.ndarray) -> np.ndarray:
        return np.interp(u, edges, cumulative, left=0.0, right=1.0)

    n_lags = int(np.ceil(KERNEL_SECONDS / tr)) + 1
    upper = (np.arange(n_lags) + slice_time_ref) * tr
    kernel = mass_before(upper) - mass_before(upper - tr)
    return kernel / kernel.sum()


def peak_lag_trs(kind: str, tr: float, slice_time_ref: float = 0.5) -> int:
    """Whole TRs from a feature's window to the volume its response peaks in."""
    return int(np.argmax(hrf_kernel(kind, tr, slice_time_ref)))


def convolve(values: np.ndarray, kind: str, tr: float, slice_time_ref: float = 0.5, scale: float = 1.0,
             block_features: int = 4096) -> np.ndarray:
    """Causal convolution along axis 0 (TRs) of (n_trs, ...) features, times ``scale``.

    float64 arithmetic, ``block_features`` feature columns at a time: the lab's video
    (946 TRs x 129,600 pixel values, uint8) needs its float32 output and one 31 MB block,
    not a float64 copy of the whole array (1 GB). Returns float32, the shape of ``values``.
    """
    kernel = hrf_kernel(kind, tr, slice_time_ref)
    flat = values.reshape(values.shape[0], -1)
    out = np.empty(flat.shape, dtype=np.float32)
    for start in range(0, flat.shape[1], block_features):
        block = np.asarray(flat[:, start:start + block_features], dtype=np.float64)
        if scale != 1.0:
            block *= scale
        out[:, start:start + block_features] = lfilter(kernel, [1.0], block, axis=0)
    return out.reshape(values.shape)


def shift(values: np.ndarray, valid: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Delay (n_trs, ...) rows by ``lag`` TRs; the first rows become zero/invalid."""
    if lag == 0:
        return values, valid
    shifted = np.zeros_like(values)
    shifted_valid = np.zeros_like(valid)
    if lag < len(values):
        shifted[lag:], shifted_valid[lag:] = values[:-lag], valid[:-lag]
    return shifted, shifted_valid

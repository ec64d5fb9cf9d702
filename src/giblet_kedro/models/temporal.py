"""Temporal modules: each TR's voxel layer from the stimulus history before it.

The per-TR encoders turn each TR's stimulus into features; a temporal module maps the
sequence of those features, ``(batch, n_trs, channels)``, to the bottleneck of every TR
from its own TR and the ``context`` TRs before it (causal: nothing after a TR reaches it).
Before the first TR of a sequence there is no stimulus: features are zero there.

- :class:`LagFilter` (``model.temporal: lags``, the default) is linear: a learned filter
  over the context, built from a small basis of lag profiles initialised from the
  canonical HRF and shifted copies of it, mixing channels with a matrix per basis
  function. The voxel layer after it weighs each basis function's output anew for each
  voxel (:class:`giblet_kedro.models.autoencoder.VoxelLayer`), so each voxel gets its own
  lag profile (FIR delays are a special case: the ridge reference's family). Being
  linear, a modality's contribution can be moved in time by filtering its shifted
  features again, without running the encoders (the in-silico timing test).
- :class:`CausalAttention` (``model.temporal: transformer``) follows TRIBE v2: a few
  attention layers over the window, each TR attending to its context with a learned
  bias per lag and head. Nonlinear: shifts and ablations run the whole model.

torch and numpy only: this module runs on a GPU machine without the rest of the stack.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional

# (delay s, dispersion, weight) of the two gamma densities: Glover (1999) as nilearn's
# glover_hrf parameterizes it, the HRF the stimulus stage and the ridge reference use
GLOVER = ((6.0, 0.9, 1.0), (12.0, 0.9, -0.48))
BASIS_SHIFTS_S = (0.0, -1.5, 1.5, 3.0, -3.0, 4.5, 6.0, 7.5)  # the canonical HRF, earlier and later


def context_trs(context_s: float, tr: float) -> int:
    """TRs a bottleneck TR reads, its own included: ``ceil(context_s / tr)`` (at least 1);
    the earliest starts ``(n - 1) tr`` s before the TR's own window."""
    return max(1, int(math.ceil(context_s / tr - 1e-9)))


def _glover_density(t: np.ndarray) -> np.ndarray:
    """Glover's canonical HRF (the difference of two gamma densities), at times ``t`` s."""
    out = np.zeros_like(t, dtype=np.float64)
    positive = t > 0
    for delay, dispersion, weight in GLOVER:
        shape, scale = delay / dispersion, dispersion
        log_pdf = (shape - 1) * np.log(t[positive]) - t[positive] / scale - math.lgamma(shape) - shape * math.log(scale)
        out[positive] += weight * np.exp(log_pdf)
    return out


def hrf_lag_profile(tr: float, n_lags: int, shift_s: float = 0.0, slice_time_ref: float = 0.5) -> np.ndarray:
    """(n_lags,) the canonical HRF integrated over each lag's window: lag ``d`` is the
    stimulus window ``d`` TRs before the volume's, whose time is ``slice_time_ref`` into
    its TR; ``shift_s`` moves the HRF later (negative: earlier). Unit sum over the lags
    unless the shift leaves nothing inside them."""
    fine = np.arange(0.0, n_lags * tr + 10.0, 0.005)
    density = _glover_density(fine - shift_s)
    profile = np.array([density[(fine > (d + slice_time_ref - 1) * tr) & (fine <= (d + slice_time_ref) * tr)].sum()
                        for d in range(n_lags)])
    total = profile.sum()
    return profile / total if abs(total) > 1e-12 else profile


def lag_basis(tr: float, n_lags: int, n_basis: int) -> np.ndarray:
    """(n_basis, n_lags) orthonormal lag profiles whose first is the canonical HRF (scaled
    to unit norm), the others spanning earlier and later HRFs (Gram-Schmidt on shifted
    copies). A basis of one is the canonical HRF alone."""
    wanted = [hrf_lag_profile(tr, n_lags, shift) for shift in BASIS_SHIFTS_S]
    wanted += [np.eye(n_lags)[d] for d in range(n_lags)]  # then single lags, if more are asked
    basis: list[np.ndarray] = []
    for profile in wanted:
        residual = profile - sum((profile @ b) * b for b in basis) if basis else profile.copy()
        norm = np.linalg.norm(residual)
        if norm > 1e-6:
            basis.append(residual / norm)
        if len(basis) == min(n_basis, n_lags):
            break
    return np.stack(basis).astype(np.float32)


class LagFilter(nn.Module):
    """Causal, linear: ``y[t] = sum_k mix[k] @ sum_d basis[k, d] x[t - d]`` over lags
    ``d < n_lags``.

    x, y : (batch, n_trs, channels). ``basis`` (n_basis, n_lags) and ``mix`` (n_basis,
    channels, channels) are learned; ``mix[0]`` starts as the identity scaled so that the
    module starts as a convolution with the canonical HRF (unit sum), the others at zero.
    """

    def __init__(self, channels: int, basis: np.ndarray):
        super().__init__()
        self.n_lags, self.n_components = int(basis.shape[1]), int(basis.shape[0])
        self.basis = nn.Parameter(torch.from_numpy(np.ascontiguousarray(basis, dtype=np.float32)))
        mix = torch.zeros(basis.shape[0], channels, channels)
        mix[0] = torch.eye(channels) / float(basis[0].sum())  # basis[0] has unit norm: back to unit sum
        self.mix = nn.Parameter(mix)

    def lagged(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_trs, n_basis, channels): each basis profile applied along time."""
        batch, n_trs, channels = x.shape
        series = functional.pad(x.transpose(1, 2).reshape(batch * channels, 1, n_trs), (self.n_lags - 1, 0))
        filtered = functional.conv1d(series, self.basis.flip(-1).unsqueeze(1).to(x.dtype))  # cross-correlation
        return filtered.view(batch, channels, -1, n_trs).permute(0, 3, 2, 1)

    def components(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_trs, n_basis, channels): each basis profile's part of the output
        (their sum is :meth:`forward`), so that a layer after it can weigh them anew."""
        return torch.einsum("btkc,kdc->btkd", self.lagged(x), self.mix.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("btkc,kdc->btd", self.lagged(x), self.mix.to(x.dtype))

    def kernel(self) -> torch.Tensor:
        """(n_lags, channels_out, channels_in) the filter: ``y[t] = sum_d kernel[d] @ x[t - d]``."""
        return torch.einsum("kd,koc->doc", self.basis, self.mix)


class CausalAttention(nn.Module):
    """A few pre-norm attention layers over the sequence, each TR attending to itself and
    the TRs before it within its layer's reach, with a learned bias per head and lag
    (relative positions: the same at every TR of the window). The layers' reaches add up
    to ``n_lags - 1``, so the stack reads exactly the context, as the lag filter does
    (and as training's windows supply).

    x, y : (batch, n_trs, channels); ``channels`` must divide by ``heads``.
    """

    def __init__(self, channels: int, n_lags: int, layers: int = 2, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if channels % heads:
            raise ValueError(f"the transformer's width {channels} must divide by its {heads} heads")
        self.n_lags, self.heads, self.n_components = int(n_lags), heads, 1
        share, extra = divmod(self.n_lags - 1, layers)
        self.reach = [share + (1 if layer < extra else 0) for layer in range(layers)]  # sums to n_lags - 1
        self.lag_bias = nn.Parameter(torch.zeros(layers, heads, n_lags))
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm1": nn.LayerNorm(channels), "qkv": nn.Linear(channels, 3 * channels),
                           "out": nn.Linear(channels, channels), "norm2": nn.LayerNorm(channels),
                           "ff": nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Dropout(dropout),
                                               nn.Linear(2 * channels, channels))})
            for _ in range(layers))
        for block in self.blocks:  # each layer starts as the identity (residual branches at zero)
            nn.init.zeros_(block["out"].weight)
            nn.init.zeros_(block["out"].bias)
            nn.init.zeros_(block["ff"][-1].weight)
            nn.init.zeros_(block["ff"][-1].bias)

    def _mask(self, n_trs: int, layer: int, device, dtype) -> torch.Tensor:
        """(heads, n_trs, n_trs) additive: the lag bias within the context, -inf elsewhere."""
        lag = torch.arange(n_trs, device=device)[:, None] - torch.arange(n_trs, device=device)[None, :]
        inside = (lag >= 0) & (lag <= self.reach[layer])
        bias = self.lag_bias[layer][:, lag.clamp(0, self.n_lags - 1)].to(dtype)
        return torch.where(inside, bias, torch.full_like(bias, float("-inf")))

    def components(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_trs, 1, channels): the output as one component."""
        return self(x).unsqueeze(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n_trs, channels = x.shape
        for layer, block in enumerate(self.blocks):
            q, k, v = block["qkv"](block["norm1"](x)).view(batch, n_trs, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(n_trs, layer, x.device,
                                                                                               q.dtype))
            x = x + block["out"](attended.transpose(1, 2).reshape(batch, n_trs, channels))
            x = x + block["ff"](block["norm2"](x))
        return x


def _lags(channels: int, n_lags: int, tr: float, n_basis: int, dropout: float) -> nn.Module:
    return LagFilter(channels, lag_basis(tr, n_lags, n_basis))


def _transformer(channels: int, n_lags: int, tr: float, n_basis: int, dropout: float) -> nn.Module:
    return CausalAttention(channels, n_lags, dropout=dropout)


# model.temporal -> builder(channels, n_lags, tr, n_basis, dropout)
TEMPORAL_MODULES = {"lags": _lags, "transformer": _transformer}
LINEAR_TEMPORAL = {"lags"}  # a modality's contribution can be shifted by filtering again


def build_temporal(kind: str, channels: int, n_lags: int, tr: float, n_basis: int, dropout: float) -> nn.Module:
    """The temporal module ``kind`` (``model.temporal``) over ``channels`` features per TR."""
    if kind not in TEMPORAL_MODULES:
        raise ValueError(f"unknown model.temporal {kind!r}; accepted: {sorted(TEMPORAL_MODULES)}")
    return TEMPORAL_MODULES[kind](channels, n_lags, tr, n_basis, dropout)

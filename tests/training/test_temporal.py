"""The temporal modules: the lag filter against numpy and nilearn, the basis, causality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from giblet_kedro.models.temporal import LagFilter, context_trs, hrf_lag_profile, lag_basis
from tests.stimulus.test_hrf import integrated_by_hand


@pytest.mark.parametrize(("tr", "ref"), [(1.5, 0.5), (2.0, 0.5), (0.8, 0.0)])
def test_the_starting_lag_profile_is_nilearns_glover_hrf_over_tr_windows(tr, ref):
    """The filter's first profile (written from Glover's formula, numpy only) against
    nilearn's Glover HRF integrated over the same TR windows (the stimulus stage's kernel)."""
    n_lags = context_trs(32.0, tr)
    ours = hrf_lag_profile(tr, n_lags, slice_time_ref=ref)
    np.testing.assert_allclose(ours, integrated_by_hand("glover", tr, ref, n_lags), atol=5e-3)
    assert ours.sum() == pytest.approx(1.0)


def test_the_basis_is_orthonormal_and_starts_with_the_hrf():
    basis = lag_basis(1.5, 14, 6)
    np.testing.assert_allclose(basis @ basis.T, np.eye(6), atol=1e-5)
    hrf = hrf_lag_profile(1.5, 14)
    np.testing.assert_allclose(basis[0], hrf / np.linalg.norm(hrf), atol=1e-6)
    assert lag_basis(1.5, 4, 10).shape == (4, 4)  # never more profiles than lags


def test_the_filter_is_the_convolution_its_kernel_says_by_numpy():
    """y[t] = sum_d kernel[d] @ x[t - d], zero before the first TR: computed with numpy
    from the module's own kernel, for random learned parameters."""
    generator = torch.Generator().manual_seed(0)
    module = LagFilter(3, lag_basis(1.5, 5, 3))
    with torch.no_grad():
        module.basis.copy_(torch.randn(module.basis.shape, generator=generator))
        module.mix.copy_(torch.randn(module.mix.shape, generator=generator))
    x = np.random.default_rng(1).standard_normal((2, 9, 3)).astype(np.float32)
    kernel = module.kernel().detach().numpy()  # (lags, out, in)
    expected = np.zeros_like(x)
    for t in range(9):
        for d in range(5):
            if t - d >= 0:
                expected[:, t] += x[:, t - d] @ kernel[d].T
    np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_it_starts_as_the_hrf_and_holds_any_fir_delay():
    """Initialised, each channel is convolved with the canonical HRF (unit sum); with a
    full basis (one profile per lag) it can be any FIR filter, here a pure delay of 2 TRs,
    the family the ridge reference's delays come from."""
    module = LagFilter(2, lag_basis(1.5, 6, 2))
    impulse = torch.zeros(1, 12, 2)
    impulse[0, 3, 1] = 1.0
    response = module(impulse)[0, :, 1].detach().numpy()
    np.testing.assert_allclose(response[3:9], hrf_lag_profile(1.5, 6), atol=1e-6)
    assert not response[:3].any() and not module(impulse)[0, :, 0].detach().numpy().any()
    full = LagFilter(2, np.eye(6, dtype=np.float32))
    with torch.no_grad():
        full.mix.zero_()
        full.mix[2] = torch.eye(2)
    x = torch.randn(1, 10, 2)
    torch.testing.assert_close(full(x)[0, 2:], x[0, :-2])


def test_each_voxel_filters_with_its_own_lag_profile_by_numpy():
    """The voxel layer after the lag filter: voxel v's output is a convolution of the
    input with its own kernel ``sum_k gain[v, k] basis[k, d] (weight[v] @ mix[k])``, written
    here with numpy loops; two voxels reading the same channel with gains on different
    basis functions peak at different lags."""
    from giblet_kedro.models.autoencoder import VoxelLayer

    generator = torch.Generator().manual_seed(0)
    module = LagFilter(3, lag_basis(1.5, 6, 4))
    layer = VoxelLayer(3, 5, module.n_components)
    with torch.no_grad():
        for parameter in (module.basis, module.mix, layer.weight, layer.bias, layer.gain):
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    x = np.random.default_rng(2).standard_normal((1, 12, 3)).astype(np.float32)
    out = layer(module.components(torch.from_numpy(x))).detach().numpy()[0]
    basis, mix = module.basis.detach().numpy(), module.mix.detach().numpy()
    weight, bias, gain = (p.detach().numpy() for p in (layer.weight, layer.bias, layer.gain))
    expected = np.tile(bias, (12, 1)).astype(np.float64)
    for v in range(5):
        kernel = np.einsum("k,kd,kc->dc", gain[v], basis, weight[v] @ mix)  # (lags, channels in)
        for t in range(12):
            for d in range(min(6, t + 1)):
                expected[t, v] += kernel[d] @ x[0, t - d]
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # own lags: the same channel through the canonical HRF alone, or through a later shift
    plain = LagFilter(1, lag_basis(1.5, 10, 4))
    voxels = VoxelLayer(1, 2, plain.n_components)
    with torch.no_grad():
        voxels.weight.fill_(1.0)
        plain.mix.copy_(torch.eye(1).expand(4, 1, 1))
        voxels.gain.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
    impulse = torch.zeros(1, 10, 1)
    impulse[0, 0, 0] = 1.0
    response = voxels(plain.components(impulse)).detach().numpy()[0]
    assert response[:, 0].argmax() != response[:, 1].argmax()


def test_voxel_layer_gradients_match_autograd_of_the_plain_sum():
    """The voxel layer's hand-written backward against autograd through the plain einsum
    ``sum_k gain[v, k] weight[v] @ components[k] + bias``, in float64, for every input."""
    from giblet_kedro.models.autoencoder import VoxelLayer

    generator = torch.Generator().manual_seed(3)
    layer = VoxelLayer(4, 7, 3).double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    components = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64)
    (layer(components) * upstream).sum().backward()
    ours = [components.grad, *(p.grad for p in (layer.weight, layer.gain, layer.bias))]
    leaves = [t.detach().clone().requires_grad_() for t in (components, layer.weight, layer.gain, layer.bias)]
    c, weight, gain, bias = leaves
    reference = torch.einsum("btkc,vc,vk->btv", c, weight, gain) + bias
    (reference * upstream).sum().backward()
    for got, leaf in zip(ours, leaves, strict=True):
        torch.testing.assert_close(got, leaf.grad)


def test_voxel_layer_keeps_no_voxel_sized_array_per_component_for_its_backward():
    """Training memory: what autograd saves for the voxel layer's backward is its inputs
    (components, weight, gains), not one (TRs, voxels) array per component, as the plain
    sum's graph would (the largest share of a lab-size step's activations)."""
    from giblet_kedro.models.autoencoder import VoxelLayer

    n_trs, n_components, channels, n_voxels = 8, 6, 4, 5000
    layer = VoxelLayer(channels, n_voxels, n_components)
    components = torch.randn(1, n_trs, n_components, channels, requires_grad=True)
    saved: list[int] = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(components).sum()
    inputs = components.numel() + layer.weight.numel() + layer.gain.numel()
    assert sum(saved) <= inputs, f"saved {sum(saved)} values for the backward; the inputs hold {inputs}"

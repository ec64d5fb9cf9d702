"""The autoencoder's shapes and wiring for every spec variant, on windows of TRs."""

from __future__ import annotations

import pytest
import torch

from giblet_kedro.models.autoencoder import CODEBOOK_SIZE, ModalityShapes, MultimodalAutoencoder, build_model

B, T = 2, 6
BATCH = {"video": torch.randn(B, T, 3, 3, 36, 64), "audio": torch.randint(0, 1024, (B, T, 4, 112)),
         "text": torch.randn(B, T, 512)}
FULL = ModalityShapes(video=(3, 3, 36, 64), audio=(4, 112), audio_is_codes=True, text=(512,), n_voxels=100)


def test_outputs_have_the_targets_shapes_and_start_at_the_mean():
    out = MultimodalAutoencoder(FULL, 64, 32, 0.0, n_lags=4)(BATCH)
    assert out["fmri"].shape == (B, T, 100) and out["video"].shape == (B, T, 3, 3, 36, 64)
    assert out["audio"].shape == (B, T, 4, CODEBOOK_SIZE, 112) and out["text"].shape == (B, T, 512)
    assert all(torch.count_nonzero(value) == 0 for value in out.values())  # zero-initialised last layers


def test_the_voxel_layer_is_the_fmri_prediction_and_all_the_decoders_read():
    shapes = ModalityShapes(video=(3, 3, 36, 64), audio=(4, 112), audio_is_codes=True, text=(512,), n_voxels=50)
    model = MultimodalAutoencoder(shapes, "voxels", 32, 0.0, rank=8, n_lags=4)
    model.eval()
    layer = model.encode(BATCH)
    assert layer.shape == (B, T, 50) and isinstance(model.fmri_head, torch.nn.Identity)
    out = model.decode(layer)
    assert torch.equal(out["fmri"], layer)
    assert {name: tuple(r.weight.shape) for name, r in model.readouts.items()} == \
        {"video": (8, 50), "audio": (8, 50), "text": (8, 50)}  # voxels -> rank, one per decoder
    assert torch.count_nonzero(layer) == 0  # it starts at the training mean
    torch.nn.init.normal_(model.decoders["text"][-1].weight)  # (trained weights are not zero)
    layer = torch.randn(B, T, 50)
    silenced = layer.clone()
    silenced[..., :10] = 0.0
    assert not torch.allclose(model.decode(silenced)["text"], model.decode(layer)["text"])
    # the text decoder reads the voxel layer through its rank-8 projection, TR by TR: by hand
    readout, decoder = model.readouts["text"], model.decoders["text"]
    hidden = torch.nn.functional.gelu((layer @ readout.weight.T + readout.bias) @ decoder[0].weight.T
                                      + decoder[0].bias)
    torch.testing.assert_close(model.decode(layer)["text"], hidden @ decoder[2].weight.T + decoder[2].bias)


def _trained_like(model: MultimodalAutoencoder, seed: int = 0) -> MultimodalAutoencoder:
    """Every parameter nudged off its initial value (zero last layers included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("temporal", ["lags", "transformer"])
def test_a_tr_reads_its_context_and_nothing_after_it(temporal):
    """Causal, with a context of ``n_lags`` TRs: the bottleneck at TR t changes when the
    stimulus of TR t - 3 changes (inside a context of 4), not when TR t + 1's or (for the
    linear filter) TR t - 4's does; a TR that is padding (not ``present``) is no stimulus."""
    shapes = ModalityShapes(None, None, False, (8,), n_voxels=20)
    model = _trained_like(MultimodalAutoencoder(shapes, "voxels", 16, 0.0, rank=8, temporal=temporal, n_lags=4))
    x = torch.randn(1, 12, 8)
    base = model.encode({"text": x})

    def changed_at(tr: int) -> torch.Tensor:
        moved = x.clone()
        moved[0, tr] += 3.0
        return (model.encode({"text": moved}) - base).abs().amax(dim=-1)[0] > 1e-6

    assert changed_at(6)[6] and changed_at(6)[9] and not changed_at(6)[:6].any()
    assert not changed_at(6)[10:].any()  # exactly the context (the transformer's layers share it)
    present = torch.ones(1, 12, dtype=torch.bool)
    present[0, :3] = False
    padded = model.encode({"text": x}, present=present)
    scrambled = x.clone()
    scrambled[0, :3] = torch.randn(3, 8)
    torch.testing.assert_close(model.encode({"text": scrambled}, present=present), padded)


def test_subject_heads_start_as_the_average_brain_and_add_a_residual_per_subject():
    shapes = ModalityShapes(None, None, False, (8,), n_voxels=20)
    model = MultimodalAutoencoder(shapes, "voxels", 16, 0.0, rank=8, n_lags=3, n_subjects=3, head_rank=2)
    _trained_like(model)
    with torch.no_grad():
        model.heads.scale.fill_(1.0)
        model.heads.offset.zero_()
        model.heads.up.zero_()
    out = model({"text": torch.randn(2, 5, 8)}, subjects=torch.tensor([0, 2]))
    torch.testing.assert_close(out["fmri"], out["average"])  # heads start as the identity
    with torch.no_grad():
        model.heads.offset[2] = 1.0
    out = model({"text": torch.randn(2, 5, 8)}, subjects=torch.tensor([0, 2]))
    torch.testing.assert_close(out["fmri"][0], out["average"][0])
    torch.testing.assert_close(out["fmri"][1], out["average"][1] + 1.0)


def test_decoding_from_a_windows_first_target_keeps_the_context_it_reads():
    """Training decodes only the TRs after a window's context: each output equals the
    same TR's output of the whole window, so the context still reaches it (cutting the
    window before the temporal module would change every one)."""
    shapes = ModalityShapes(None, None, False, (8,), n_voxels=20)
    model = _trained_like(MultimodalAutoencoder(shapes, "voxels", 16, 0.0, rank=8, n_lags=4)).eval()
    x = torch.randn(2, 10, 8)
    with torch.no_grad():
        whole, tail = model({"text": x}), model({"text": x}, first=3)
        cut = model({"text": x[:, 3:]})
    for name in whole:
        assert tail[name].shape[1] == 7
        torch.testing.assert_close(tail[name], whole[name][:, 3:])
    assert not torch.allclose(cut["fmri"], whole["fmri"][:, 3:], atol=1e-4)


def test_the_latent_layout_keeps_an_fmri_head_factorized_when_asked():
    shapes = ModalityShapes(video=None, audio=None, audio_is_codes=False, text=(512,), n_voxels=50)
    full = MultimodalAutoencoder(shapes, 16, 32, 0.0, n_lags=3)
    assert isinstance(full.fmri_head, torch.nn.Linear) and full.fmri_head.weight.shape == (50, 16)
    factorized = MultimodalAutoencoder(shapes, 16, 32, 0.0, rank=4, n_lags=3)
    assert [tuple(layer.weight.shape) for layer in factorized.fmri_head] == [(4, 16), (50, 4)]
    assert factorized({"text": BATCH["text"]})["fmri"].shape == (B, T, 50)


def test_missing_modalities_have_no_encoder_decoder_or_output():
    shapes = ModalityShapes(video=None, audio=(64, 112), audio_is_codes=False, text=None, n_voxels=10)
    model = MultimodalAutoencoder(shapes, 16, 16, 0.0, n_lags=3)
    out = model({"audio": torch.randn(B, T, 64, 112)})  # mel spectrogram
    assert set(out) == {"fmri", "audio"} and out["audio"].shape == (B, T, 64, 112)
    assert set(model.encoders) == set(model.decoders) == {"audio"}


def test_the_labs_sizes_stay_bounded_with_one_unit_per_voxel():
    shapes = ModalityShapes(video=(3, 3, 90, 160), audio=(4, 112), audio_is_codes=True, text=(512,), n_voxels=83_138)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    spec = {"bottleneck": "voxels", "rank": None, "hidden": 1024, "dropout": 0.3, "context_s": 21.0, "lag_basis": 6}
    voxels = count(build_model(shapes, spec, tr=1.5))  # rank 256
    latent = count(build_model(shapes, {**spec, "bottleneck": 2048}, tr=1.5))
    projections = 4 * 83_138 * 256  # rank -> voxels, and voxels -> rank for 3 decoders
    lags = 6 * 256 * 256  # the temporal module: a channel mix per lag profile
    assert projections + lags < voxels < projections + lags + 20_000_000  # the rest: encoders and decoders
    assert voxels < latent < 3.5e9 / 10  # the original fully connected model had 3.5 billion


def test_no_modality_is_an_error():
    with pytest.raises(ValueError, match="at least one stimulus modality"):
        MultimodalAutoencoder(ModalityShapes(None, None, False, None, 10), 16, 16, 0.0)


def test_an_unknown_temporal_module_is_named():
    with pytest.raises(ValueError, match="unknown model.temporal 'rnn'; accepted"):
        MultimodalAutoencoder(ModalityShapes(None, None, False, (4,), 10), 16, 16, 0.0, temporal="rnn")


def test_a_latent_with_a_narrower_code_widens_it_after_the_temporal_module():
    """bottleneck 32 with code_rank 8: the temporal module reads and returns 8 channels per
    TR, and the latent is a linear map of them (the same map at every TR)."""
    shapes = ModalityShapes(None, None, False, (8,), n_voxels=20)
    model = MultimodalAutoencoder(shapes, 32, 16, 0.0, n_lags=3, code_rank=8)
    _trained_like(model)
    model.eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        features = model.features_from_encoded(model.encode_windows({"text": x}))
        latent = model.encode({"text": x})
    assert features.shape == (2, 5, 8) and latent.shape == (2, 5, 32)
    torch.testing.assert_close(latent, features @ model.to_bottleneck.weight.T + model.to_bottleneck.bias)
    assert MultimodalAutoencoder(shapes, 32, 16, 0.0, n_lags=3).channels == 32  # no code_rank: the latent itself

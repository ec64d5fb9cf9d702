"""The autoencoder's shapes for every spec variant."""

from __future__ import annotations

import pytest
import torch

from giblet_kedro.models.autoencoder import CODEBOOK_SIZE, ModalityShapes, MultimodalAutoencoder

BATCH = {"video": torch.randn(2, 3, 3, 36, 64), "audio": torch.randint(0, 1024, (2, 4, 112)), "text": torch.randn(2, 512)}


def test_outputs_have_the_targets_shapes_and_start_at_the_mean():
    shapes = ModalityShapes(video=(3, 3, 36, 64), audio=(4, 112), audio_is_codes=True, text=(512,), n_voxels=100)
    out = MultimodalAutoencoder(shapes, 64, 32, 0.0)(BATCH)
    assert out["fmri"].shape == (2, 100) and out["video"].shape == (2, 3, 3, 36, 64)
    assert out["audio"].shape == (2, 4, CODEBOOK_SIZE, 112) and out["text"].shape == (2, 512)
    assert all(torch.count_nonzero(value) == 0 for value in out.values())  # zero-initialised last layers


def test_the_voxel_layer_is_the_fmri_prediction_and_all_the_decoders_read():
    shapes = ModalityShapes(video=(3, 3, 36, 64), audio=(4, 112), audio_is_codes=True, text=(512,), n_voxels=50)
    model = MultimodalAutoencoder(shapes, "voxels", 32, 0.0, rank=8)
    model.eval()
    layer = model.encode(BATCH)
    assert layer.shape == (2, 50) and isinstance(model.fmri_head, torch.nn.Identity)
    out = model.decode(layer)
    assert torch.equal(out["fmri"], layer)
    assert {name: tuple(r.weight.shape) for name, r in model.readouts.items()} == \
        {"video": (8, 50), "audio": (8, 50), "text": (8, 50)}  # voxels -> rank, one per decoder
    assert torch.count_nonzero(layer) == 0  # it starts at the training mean
    torch.nn.init.normal_(model.decoders["text"][-1].weight)  # (trained weights are not zero)
    layer = torch.randn(2, 50)
    silenced = layer.clone()
    silenced[:, :10] = 0.0
    assert not torch.allclose(model.decode(silenced)["text"], model.decode(layer)["text"])
    # the text decoder reads the voxel layer through its rank-8 projection: by hand
    readout, decoder = model.readouts["text"], model.decoders["text"]
    hidden = torch.nn.functional.gelu((layer @ readout.weight.T + readout.bias) @ decoder[0].weight.T
                                      + decoder[0].bias)
    torch.testing.assert_close(model.decode(layer)["text"], hidden @ decoder[2].weight.T + decoder[2].bias)


def test_the_latent_layout_keeps_an_fmri_head_factorized_when_asked():
    shapes = ModalityShapes(video=None, audio=None, audio_is_codes=False, text=(512,), n_voxels=50)
    full = MultimodalAutoencoder(shapes, 16, 32, 0.0)
    assert isinstance(full.fmri_head, torch.nn.Linear) and full.fmri_head.weight.shape == (50, 16)
    factorized = MultimodalAutoencoder(shapes, 16, 32, 0.0, rank=4)
    assert [tuple(layer.weight.shape) for layer in factorized.fmri_head] == [(4, 16), (50, 4)]
    assert factorized({"text": BATCH["text"]})["fmri"].shape == (2, 50)


def test_missing_modalities_have_no_encoder_decoder_or_output():
    shapes = ModalityShapes(video=None, audio=(64, 112), audio_is_codes=False, text=None, n_voxels=10)
    model = MultimodalAutoencoder(shapes, 16, 16, 0.0)
    out = model({"audio": torch.randn(2, 64, 112)})  # mel spectrogram
    assert set(out) == {"fmri", "audio"} and out["audio"].shape == (2, 64, 112)
    assert set(model.encoders) == set(model.decoders) == {"audio"}


def test_the_labs_sizes_stay_bounded_with_one_unit_per_voxel():
    shapes = ModalityShapes(video=(3, 3, 90, 160), audio=(4, 112), audio_is_codes=True, text=(512,), n_voxels=83_138)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    voxels = count(MultimodalAutoencoder(shapes, "voxels", 1024, 0.3))  # rank 256
    latent = count(MultimodalAutoencoder(shapes, 2048, 1024, 0.3))
    projections = 4 * 83_138 * 256  # features -> rank -> voxels, and voxels -> rank for 3 decoders
    assert projections < voxels < projections + 20_000_000  # the rest: encoders and decoders
    assert voxels < latent < 3.5e9 / 10  # the lab's fully connected model had 3.5 billion


def test_no_modality_is_an_error():
    with pytest.raises(ValueError, match="at least one stimulus modality"):
        MultimodalAutoencoder(ModalityShapes(None, None, False, None, 10), 16, 16, 0.0)

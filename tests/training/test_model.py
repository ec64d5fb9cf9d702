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


def test_voxel_bottleneck_is_the_fmri_layer():
    shapes = ModalityShapes(video=None, audio=None, audio_is_codes=False, text=(512,), n_voxels=50)
    model = MultimodalAutoencoder(shapes, "voxels", 32, 0.0)
    assert isinstance(model.fmri_head, torch.nn.Identity)
    assert model(BATCH)["fmri"].shape == (2, 50)


def test_missing_modalities_have_no_encoder_decoder_or_output():
    shapes = ModalityShapes(video=None, audio=(64, 112), audio_is_codes=False, text=None, n_voxels=10)
    model = MultimodalAutoencoder(shapes, 16, 16, 0.0)
    out = model({"audio": torch.randn(2, 64, 112)})  # mel spectrogram
    assert set(out) == {"fmri", "audio"} and out["audio"].shape == (2, 64, 112)
    assert set(model.encoders) == set(model.decoders) == {"audio"}


def test_the_labs_sizes_are_expressible_and_an_order_smaller():
    shapes = ModalityShapes(video=(3, 3, 90, 160), audio=(8, 112), audio_is_codes=True, text=(512,), n_voxels=83_138)
    model = MultimodalAutoencoder(shapes, 2048, 1024, 0.3)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 3.5e9 / 10  # the lab's fully connected model had 3.5 billion


def test_no_modality_is_an_error():
    with pytest.raises(ValueError, match="at least one stimulus modality"):
        MultimodalAutoencoder(ModalityShapes(None, None, False, None, 10), 16, 16, 0.0)

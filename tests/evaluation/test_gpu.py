"""The GPU path: EnCodec and CLIP on CUDA, himalaya's torch_cuda backend for the ridge.
Without a GPU the device choice is tested and the CUDA runs skip (CPU is the default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from giblet_kedro.errors import InputDataError
from giblet_kedro.evaluation.ridge import fit_banded_ridge, ridge_backend
from giblet_kedro.spec.compile import compile_experiment
from giblet_kedro.spec.load import find_spec_file
from giblet_kedro.spec.reference import make_reference

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_auto_uses_the_gpu_only_when_one_is_visible():
    assert ridge_backend("auto") == ("torch_cuda" if torch.cuda.is_available() else "numpy")
    assert ridge_backend("numpy") == "numpy"
    if not torch.cuda.is_available():
        with pytest.raises(InputDataError, match="evaluate.ridge.backend is 'torch_cuda' but no CUDA device"):
            ridge_backend("torch_cuda")


def test_the_backend_is_not_in_the_evaluation_fingerprint():
    demo = str(find_spec_file("demo"))
    fingerprints = {choice: compile_experiment(make_reference(demo, {"evaluate": {"ridge": {"backend": choice}}}),
                                               check_files=False).fingerprints["evaluate"]
                    for choice in ("auto", "numpy", "torch_cuda")}
    assert len(set(fingerprints.values())) == 1


def _planted(rng):
    bands = {"a": rng.standard_normal((200, 6)).astype(np.float32), "b": rng.standard_normal((200, 4)).astype(np.float32)}
    fmri = (bands["a"] @ rng.standard_normal((6, 30)) + 0.5 * rng.standard_normal((200, 30))).astype(np.float32)
    return bands, fmri


@gpu
def test_the_ridge_on_torch_cuda_matches_numpy(rng):
    bands, fmri = _planted(rng)
    args = (bands, fmri, np.arange(150), np.arange(160, 200), np.array([0]), [[0]], [1.0, 10.0, 100.0], 5, 0)
    cpu, cuda = fit_banded_ridge(*args, backend="numpy"), fit_banded_ridge(*args, backend="torch_cuda")
    np.testing.assert_allclose(cuda.prediction, cpu.prediction, atol=1e-3)


@gpu
def test_clip_on_cuda_matches_cpu():
    from giblet_kedro.stimulus.text import build_clip, embed_texts

    model, tokenizer = build_clip("ViT-B-32", "random", seed=0)
    texts = ["Sherlock looks at the phone", "John writes his blog", "a cab at night"]
    cpu = embed_texts(texts, model, tokenizer, device="cpu")
    cuda = embed_texts(texts, model, tokenizer, device="cuda")
    np.testing.assert_allclose(cuda, cpu, atol=1e-3)

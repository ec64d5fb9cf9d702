"""Pretrained weights, offline: the torch hub cache (EnCodec), the Hugging Face cache
(open_clip tags), local files, and `random` as the explicit opt-in."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from giblet_kedro.errors import SpecError
from giblet_kedro.spec.compile import compile_spec, resolve_weights
from giblet_kedro.spec.load import parse_spec
from giblet_kedro.stimulus.weights import ENCODEC_FILE, ENCODEC_URL, RANDOM

SPEC = """
name: real
fmri: {{subjects: {{"01": /data/sub-01.nii.gz, "02": /data/sub-02.nii.gz}}, tr: 1.5}}
stimulus:
  audio: {{path: /data/movie.mp4, weights: {audio}}}
  text: {{annotations: /data/a.xlsx, columns: [c], model: ViT-B-32, weights: {text}}}
"""


def spec(audio="null", text="random", demo=False):
    text_ = SPEC.format(audio=audio, text=text)
    if demo:
        text_ = text_.replace("/data/", "'{demo}/").replace(".nii.gz", ".nii.gz'").replace(".mp4", ".mp4'") \
            .replace(".xlsx", ".xlsx'") + "demo: {}\n"
    return parse_spec(text_)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def encodec_state(tmp_path_factory) -> Path:
    """A real EnCodec 24 kHz state dict (random values: the real file cannot be downloaded here)."""
    from giblet_kedro.stimulus.audio import build_encodec

    model = build_encodec(3.0, RANDOM, seed=7)
    path = tmp_path_factory.mktemp("encodec") / ENCODEC_FILE
    torch.save(model.state_dict(), path)
    return path


def test_null_without_demo_is_refused_naming_the_exact_file_to_fetch(torch_home):
    with pytest.raises(SpecError) as caught:
        resolve_weights(spec(), None, check_files=True)
    message = str(caught.value)
    expected = torch_home / "hub" / "checkpoints" / ENCODEC_FILE
    assert f"copy it to {expected}" in message and ENCODEC_URL in message and "weights: random" in message
    assert message.startswith("stimulus.audio.weights = null")


def test_null_finds_the_torch_hub_cache_and_the_file_is_fingerprinted(torch_home, encodec_state):
    cached = torch_home / "hub" / "checkpoints" / ENCODEC_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(encodec_state.read_bytes())
    resolved, lookups = resolve_weights(spec(), None, check_files=True)
    assert resolved.stimulus.audio.weights == str(cached) and lookups["audio"].found == str(cached)
    first = compile_spec(spec(), Path("real.yml"), check_files=False).fingerprints["audio_codes_tr"]
    again = compile_spec(spec(), Path("real.yml"), check_files=False).fingerprints["audio_codes_tr"]
    cached.write_bytes(encodec_state.read_bytes()[:-8] + b"\0" * 8)  # other weights: another cache
    changed = compile_spec(spec(), Path("real.yml"), check_files=False).fingerprints["audio_codes_tr"]
    assert first == again != changed


def test_a_found_encodec_file_is_what_the_extractor_loads(encodec_state):
    from giblet_kedro.stimulus.audio import build_encodec

    loaded = build_encodec(3.0, str(encodec_state), seed=0)  # another seed: only the file decides
    saved = torch.load(encodec_state, weights_only=True)
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    assert not torch.equal(build_encodec(3.0, RANDOM, seed=0).state_dict()["encoder.model.0.conv.conv.bias"],
                           saved["encoder.model.0.conv.conv.bias"])


def test_random_is_explicit_and_a_demo_may_leave_weights_out(torch_home):
    resolved, lookups = resolve_weights(spec(audio="random"), None, check_files=True)
    assert resolved.stimulus.audio.weights == RANDOM and lookups["audio"].is_random
    demo, _ = resolve_weights(spec(audio="null", text="null", demo=True), "fp", check_files=True)
    assert demo.stimulus.audio.weights == RANDOM and demo.stimulus.text.weights == RANDOM
    with pytest.raises(SpecError, match=r"stimulus.text.weights = null: .*a tag of ViT-B-32 \(openai, "):
        resolve_weights(spec(audio="random", text="null"), None, check_files=True)


def test_an_open_clip_tag_is_read_from_the_hugging_face_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SpecError, match=r"hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K "):
        resolve_weights(spec(audio="random", text="laion2b_s34b_b79k"), None, check_files=True)
    repo = tmp_path / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    snapshot = repo / "snapshots" / "0123abc" / "open_clip_pytorch_model.bin"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_bytes(b"weights")
    resolved, lookups = resolve_weights(spec(audio="random", text="laion2b_s34b_b79k"), None, check_files=True)
    assert resolved.stimulus.text.weights == str(snapshot)
    assert lookups["text"].looked[0].startswith(str(tmp_path / "hub"))


def test_weights_command_lists_what_was_found_and_what_is_missing(tmp_path, torch_home, encodec_state, monkeypatch):
    from giblet_kedro.cli import cli

    monkeypatch.setenv("GIBLET_PROJECT_ROOT", str(tmp_path))
    spec_file = tmp_path / "real.yml"
    spec_file.write_text(SPEC.format(audio="null", text="random"))
    missing = CliRunner().invoke(cli, ["giblet", "weights", "-e", str(spec_file)])
    assert missing.exit_code == 1 and "MISSING" in missing.output and ENCODEC_FILE in missing.output
    assert "RANDOM weights, on purpose" in missing.output
    cached = torch_home / "hub" / "checkpoints" / ENCODEC_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(encodec_state.read_bytes())
    found = CliRunner().invoke(cli, ["giblet", "weights", "-e", str(spec_file)])
    assert found.exit_code == 0, found.output
    assert f"found:     {cached}" in found.output
    assert hashlib.sha256(cached.read_bytes()).hexdigest() in found.output

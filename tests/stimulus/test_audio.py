"""Audio on the TR grid: exactly the model's codebooks, 112 frames per 1.5 s TR, no drift."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from giblet_kedro.errors import InputDataError
from giblet_kedro.stimulus import audio
from giblet_kedro.stimulus.aligned import TrGrid
from tests.stimulus.conftest import write_movie


def test_half_frame_per_tr_is_dropped_by_timestamp_without_drift():
    grid = TrGrid.single(tr=1.5, start=0, stop=400)
    starts = audio.tr_frame_starts(grid, audio_start_s=0.0)
    assert audio.frames_per_tr(1.5) == 112
    # by hand: TR i starts at 112.5 i frames; first frame centre at or after it
    assert starts[:5].tolist() == [0, 112, 225, 337, 450]
    centres = (np.arange(50_000) + 0.5) / 75.0  # brute force: first centre at or after each onset
    expected = np.array([np.flatnonzero(centres >= onset - 1e-12)[0] for onset in np.arange(400) * 1.5])
    np.testing.assert_array_equal(starts, expected)
    assert np.abs(starts / 75.0 - np.arange(400) * 1.5).max() <= 1 / 75  # never more than one frame off


def test_frames_on_grid_gathers_consecutive_frames_and_pads(rng):
    frames = np.arange(3 * 400).reshape(3, 400)  # (channels, frames): value = index + 400 * channel
    values, valid = audio.frames_on_grid(frames, TrGrid.single(tr=1.5, start=0, stop=4), audio_start_s=0.0)
    assert values.shape == (4, 3, 112)
    np.testing.assert_array_equal(values[1, 0], np.arange(112, 224))
    np.testing.assert_array_equal(values[2, 2], 800 + np.arange(225, 337))
    assert valid.tolist() == [True, True, True, False]  # TR 3 needs frames 337..448 > 399
    assert np.all(values[3] == 0)


def test_audio_start_offset_moves_the_frames():
    starts = audio.tr_frame_starts(TrGrid.single(tr=1.5, start=0, stop=3), audio_start_s=0.2)
    # TR 1 starts 1.3 s into the audio = 97.5 frames: frame 97's centre is exactly there
    assert starts.tolist() == [-15, 97, 210]


@pytest.mark.parametrize(("bandwidth", "n_q"), [(1.5, 2), (3.0, 4), (6.0, 8), (12.0, 16), (24.0, 32)])
def test_codebooks_kept_are_exactly_the_bandwidths(bandwidth, n_q):
    assert audio.n_codebooks(bandwidth) == n_q
    model = audio.build_encodec(bandwidth, None, seed=0)
    codes = model.encode(torch.zeros(1, 1, audio.SAMPLE_RATE // 2))[0][0]
    assert codes.shape[1] == n_q


@pytest.fixture
def tone_movie(tmp_path):
    return write_movie(tmp_path / "tone.mkv", list(np.arange(60) / 10.0), audio_s=6.0, rate=22050)


def test_codes_vary_with_random_weights_and_are_seeded(tone_movie):
    grid = TrGrid.single(tr=1.5, start=0, stop=3)
    first = audio.extract_audio(tone_movie, grid, "encodec_24khz", 3.0, None, seed=0, chunk_s=2)
    again = audio.extract_audio(tone_movie, grid, "encodec_24khz", 3.0, None, seed=0, chunk_s=2)
    assert first.values.shape == (3, 4, 112) and first.values.dtype == np.int16
    assert len(np.unique(first.values)) > 20  # codebooks were initialised: not all zero
    np.testing.assert_array_equal(first.values, again.values)
    assert first.meta["n_codebooks"] == 4 and first.meta["frames_per_tr"] == 112


def test_decoder_side_rebuilds_the_codebooks_the_codes_index(tone_movie):
    """Decoded audio of lesions rebuilds the codec from the soundtrack and seed: its
    codebooks must be the encoder's, so the cached codes re-encode identically and
    resynthesized true codes sound like the soundtrack."""
    grid = TrGrid.single(tr=1.5, start=0, stop=4)
    cached = audio.extract_audio(tone_movie, grid, "encodec_24khz", 3.0, None, seed=5, chunk_s=2)
    samples, rate, _ = audio.decode_soundtrack(tone_movie)
    wav = audio.to_model_rate(samples, rate)
    rebuilt = audio.codec_for(wav, 3.0, None, seed=5)
    reencoded, _ = audio.frames_on_grid(audio.encode_chunked(rebuilt, wav, chunk_s=2, device="cpu"), grid, 0.0)
    np.testing.assert_array_equal(reencoded, cached.values)
    codes = np.concatenate(list(cached.values.astype(np.int64)), axis=1)  # (n_q, 4 * 112)
    waveform = audio.codes_to_audio(rebuilt, codes)
    assert waveform.shape == (codes.shape[1] * audio.HOP,) and np.isfinite(waveform).all()
    other = audio.codes_to_audio(audio.codec_for(wav, 3.0, None, seed=6), codes)
    assert not np.allclose(waveform, other)  # another seed: other codebooks, other sound


def test_another_movie_is_coded_with_the_training_movies_codebooks(tmp_path, tone_movie):
    """Random weights fit their codebooks on the movie they code; a new movie (in silico)
    must be coded with the training movie's, kept with its cache: its codes are those of
    the seeded codec with the training codebooks loaded by hand, not what a k-means on the
    new movie would give."""
    from tests.stimulus.conftest import write_movie

    grid = TrGrid.single(tr=1.5, start=0, stop=4)
    training = audio.extract_audio(tone_movie, grid, "encodec_24khz", 1.5, None, seed=3, chunk_s=60)
    books = training.extras["codebooks"]
    assert books.shape == (2, 1024, 128) and "k-means codebooks on this soundtrack" in training.meta["weights"]
    other = write_movie(tmp_path / "other.mkv", list(np.arange(60) / 10.0), audio_s=6.0, rate=22050, tone_hz=660.0)
    coded = audio.extract_audio(other, grid, "encodec_24khz", 1.5, None, seed=3, chunk_s=60, codebooks=books)
    alone = audio.extract_audio(other, grid, "encodec_24khz", 1.5, None, seed=3, chunk_s=60)
    np.testing.assert_array_equal(coded.extras["codebooks"], books)
    assert "the training movie's k-means codebooks" in coded.meta["weights"]
    # by hand: the same seeded codec, the training codebooks loaded through its own state dict
    samples, rate, _ = audio.decode_soundtrack(other)
    wav = audio.to_model_rate(samples, rate)
    codec = audio.build_encodec(1.5, None, seed=3)
    state = codec.state_dict()
    for q, book in enumerate(books):
        state[f"quantizer.vq.layers.{q}._codebook.embed"] = torch.from_numpy(book)
        state[f"quantizer.vq.layers.{q}._codebook.inited"] = torch.ones(1)
    codec.load_state_dict(state)
    expected, _ = audio.frames_on_grid(audio.encode_chunked(codec, wav, chunk_s=60, device="cpu"), grid, 0.0)
    np.testing.assert_array_equal(coded.values, expected)
    assert (coded.values != alone.values).mean() > 0.5  # a k-means of its own codes otherwise


def test_local_weights_load_safely_and_give_the_same_codes(tmp_path, tone_movie):
    samples, rate, _ = audio.decode_soundtrack(tone_movie)
    wav = audio.to_model_rate(samples, rate)
    model = audio.build_encodec(6.0, None, seed=3, init_audio=wav)
    weights = tmp_path / "encodec.th"
    torch.save(model.state_dict(), weights)
    loaded = audio.build_encodec(6.0, str(weights), seed=99)
    with torch.no_grad():
        np.testing.assert_array_equal(model.encode(wav[None])[0][0].numpy(), loaded.encode(wav[None])[0][0].numpy())
    with pytest.raises(InputDataError, match="stimulus.audio.weights"):
        audio.build_encodec(6.0, str(tmp_path / "missing.th"), seed=0)


def test_chunked_encoding_matches_whole_file_encoding(tone_movie, monkeypatch):
    """1 s of context warms the encoder up: the chunked codes agree with the whole file's
    (0.89 to 0.91 of frames measured, over seeds and 1 or 2 threads; float rounding moves
    some codes) far more than without it (0.79 to 0.82)."""
    samples, rate, _ = audio.decode_soundtrack(tone_movie)
    wav = audio.to_model_rate(samples, rate)
    model = audio.build_encodec(3.0, None, seed=0, init_audio=wav)
    with torch.no_grad():
        whole = model.encode(wav[None])[0][0][0].numpy()
    chunked = audio.encode_chunked(model, wav, chunk_s=2, device="cpu")
    assert chunked.shape == whole.shape
    monkeypatch.setattr(audio, "CONTEXT_S", 0)
    cold = audio.encode_chunked(model, wav, chunk_s=2, device="cpu")
    assert (chunked == whole).mean() > 0.85 and (chunked == whole).mean() > (cold == whole).mean() + 0.04


def test_resampling_uses_encodecs_helper_in_chunks(rng):
    from encodec.utils import convert_audio

    samples = rng.standard_normal(44100 * 5).astype(np.float32) * 0.1
    whole = convert_audio(torch.from_numpy(samples)[None], 44100, audio.SAMPLE_RATE, 1)
    chunked = audio.to_model_rate(samples, 44100, chunk_s=2)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked.numpy(), whole.numpy(), atol=1e-4)


def test_mel_option_needs_no_weights(tone_movie):
    aligned = audio.extract_audio(tone_movie, TrGrid.single(tr=1.5, start=0, stop=3), "mel", 3.0, None, seed=0)
    assert aligned.values.shape == (3, audio.MEL_BANDS, 112) and aligned.values.dtype == np.float32
    assert np.isfinite(aligned.values).all() and aligned.values.std() > 0


def test_movie_without_audio_track_is_named(tmp_path):
    silent = write_movie(tmp_path / "silent.mkv", [0.0, 0.1, 0.2])
    with pytest.raises(InputDataError, match=r"stimulus.audio.path: .*silent.mkv has no audio track"):
        audio.decode_soundtrack(silent)


def test_real_soundtrack(real_movie):
    samples, rate, start = audio.decode_soundtrack(real_movie)
    assert rate == 44100 and abs(len(samples) / rate - 30.0) < 0.1 and start < 0.05
    aligned = audio.extract_audio(real_movie, TrGrid.single(tr=1.5, start=0, stop=20), "encodec_24khz", 1.5, None, seed=0)
    assert aligned.values.shape == (20, 2, 112) and aligned.valid.all()
    assert len(np.unique(aligned.values)) > 50


def test_missing_audio_file_is_named(tmp_path):
    with pytest.raises(InputDataError, match=r"stimulus.audio.path: file not found: .*gone.mp4"):
        audio.decode_soundtrack(tmp_path / "gone.mp4")

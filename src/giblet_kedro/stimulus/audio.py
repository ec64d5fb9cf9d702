"""The soundtrack on the TR grid: EnCodec codes (or a log-mel spectrogram).

EnCodec 24 kHz emits 75 code frames per second; frame ``j`` covers audio
``[j / 75, (j + 1) / 75)`` seconds after the soundtrack's first sample. A 1.5 s TR spans
112.5 frames, so windows alternately hold 112 and 113 frame centres. Every TR takes
exactly ``floor(tr * 75)`` frames (112), starting at the first frame whose centre is at
or after the TR's window start; that start is computed from each TR's own timestamp, so
the half frame never accumulates into drift (at most one 13.3 ms frame per TR is left
out). The codebooks kept are exactly those the model uses at the spec's bandwidth
(1.5/3/6/12/24 kbps -> 2/4/8/16/32).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import av
import numpy as np
import torch

from giblet_kedro.errors import InputDataError
from giblet_kedro.progress import progress
from giblet_kedro.stimulus.aligned import TrAligned, TrGrid, alignment_notes
from giblet_kedro.stimulus.media import open_media
from giblet_kedro.stimulus.weights import RANDOM, describe_weights

log = logging.getLogger(__name__)

FRAME_RATE = 75  # EnCodec 24 kHz: 24000 / 320
SAMPLE_RATE = 24_000
HOP = SAMPLE_RATE // FRAME_RATE
CONTEXT_S = 1  # left context (seconds) re-encoded before each chunk, then dropped
MEL_BANDS = 64
KMEANS_ITERS = 2
INIT_SECONDS = 10  # soundtrack seconds the k-means codebooks of random weights are fit on


# ---------------------------------------------------------------------------- decode
def decode_soundtrack(path: Path, label: str = "stimulus.audio.path") -> tuple[np.ndarray, int, float]:
    """Decode the first audio stream to mono float32.

    Returns ``(samples (n,), sample_rate, start_s)`` where ``start_s`` is the movie time
    of the first sample (streams need not start at 0).
    """
    container = open_media(path, label)
    try:
        if not container.streams.audio:
            raise InputDataError(
                f"{label}: {path} has no audio track; give a movie with a soundtrack, or leave "
                "stimulus.audio out of the spec to train without audio"
            )
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        parts, start_s = [], None
        for frame in container.decode(stream):
            if start_s is None:
                start_s = float(frame.time or 0.0)
            parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except av.FFmpegError as exc:
        raise InputDataError(f"{label}: error while decoding audio of {path}: {exc}") from None
    finally:
        container.close()
    if not parts:
        raise InputDataError(f"{label}: the audio track of {path} holds no samples")
    return np.concatenate(parts).astype(np.float32), rate, start_s or 0.0


def to_model_rate(samples: np.ndarray, rate: int, chunk_s: int = 60) -> torch.Tensor:
    """Mono ``samples`` at ``rate`` -> (1, n) at 24 kHz with EnCodec's own ``convert_audio``,
    chunk by chunk with 1 s of context on each side (no edge artefacts, bounded memory)."""
    from encodec.utils import convert_audio

    wav = torch.from_numpy(samples)[None]
    if rate == SAMPLE_RATE:
        return wav
    pieces = []
    total_s = math.ceil(len(samples) / rate)
    for start in range(0, total_s, chunk_s):
        lo, hi = max(start - 1, 0), min(start + chunk_s + 1, total_s)
        converted = convert_audio(wav[:, lo * rate:hi * rate], rate, SAMPLE_RATE, 1)
        keep_from = (start - lo) * SAMPLE_RATE
        pieces.append(converted[:, keep_from:keep_from + chunk_s * SAMPLE_RATE])
    return torch.cat(pieces, dim=1)[:, : round(len(samples) * SAMPLE_RATE / rate)]


# --------------------------------------------------------------------------- encodec
def build_encodec(bandwidth: float, weights: str | None, seed: int, init_audio: torch.Tensor | None = None,
                  codebooks: np.ndarray | None = None):
    """The real EnCodec 24 kHz architecture.

    ``weights``: a local state dict loaded with ``weights_only=True``; ``random`` (or
    ``None``): the model is randomly initialised (seeded) and, because a fresh quantizer's
    codebooks are all zero (every code would be 0), its codebooks are either ``codebooks``
    ((n_q, 1024, 128), the ones a training movie's encoding fit: the codes then mean what
    they meant in training) or initialised by the library's own k-means on ``init_audio``,
    as EnCodec does on its first training batch.
    """
    from encodec import EncodecModel

    weights = None if weights == RANDOM else weights
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # encodec 0.1.1 uses torch's deprecated weight_norm
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise InputDataError(f"stimulus.audio.weights: cannot load an EnCodec 24 kHz state dict from "
                                 f"{weights}: {exc}") from None
    model.set_target_bandwidth(bandwidth)
    model.eval()
    if weights is None and codebooks is not None:
        set_codebooks(model, codebooks)
    elif weights is None and init_audio is not None:
        for layer in model.quantizer.vq.layers:
            # The library's 50 k-means iterations build a (frames x 1024 x 128) distance
            # tensor each time (~90 s on 2 cores); codes of random weights only need to
            # be data-driven and varied, which 2 iterations give.
            layer._codebook.kmeans_iters = KMEANS_ITERS
        with torch.no_grad():
            latent = model.encoder(init_audio[None])
            model.quantizer.train()
            model.quantizer(latent, model.frame_rate, bandwidth)  # k-means init of the used codebooks
            model.quantizer.eval()
    return model


def used_codebooks(model) -> np.ndarray:
    """(n_q, 1024, 128) float32 the codebooks of the quantizer layers the bandwidth uses."""
    n_q = model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, model.bandwidth)
    return np.stack([layer._codebook.embed.detach().numpy() for layer in model.quantizer.vq.layers[:n_q]]
                    ).astype(np.float32)


def set_codebooks(model, codebooks: np.ndarray) -> None:
    """Give the quantizer's first ``len(codebooks)`` layers these codebooks (marked fit)."""
    for layer, book in zip(model.quantizer.vq.layers, np.asarray(codebooks), strict=False):
        with torch.no_grad():
            layer._codebook.embed.copy_(torch.from_numpy(book))
            layer._codebook.embed_avg.copy_(torch.from_numpy(book))
            layer._codebook.inited.fill_(True)


def codec_for(wav: torch.Tensor, bandwidth: float, weights: str | None, seed: int,
              codebooks: np.ndarray | None = None):
    """The EnCodec model that codes this soundtrack: random weights get ``codebooks`` (a
    training movie's, so that another movie is coded as training was) or, for the
    training movie itself, codebooks from k-means on its first 10 s. Deterministic, so the
    decoder side (decoded audio of lesions) rebuilds the very codebooks the codes index."""
    if codebooks is not None and weights in (None, RANDOM):
        return build_encodec(bandwidth, weights, seed, codebooks=codebooks)
    return build_encodec(bandwidth, weights, seed, init_audio=wav[:, : INIT_SECONDS * SAMPLE_RATE])


def codes_to_audio(model, codes: np.ndarray) -> np.ndarray:
    """(n_q, n_frames) integer codes -> (n_samples,) float32 waveform at 24 kHz."""
    with torch.no_grad():
        wav = model.decode([(torch.from_numpy(np.asarray(codes, dtype=np.int64))[None], None)])
    return wav[0, 0].numpy().astype(np.float32)


def n_codebooks(bandwidth: float) -> int:
    return int(round(bandwidth * 1000 / (FRAME_RATE * 10)))  # 10 bits per code


def encode_chunked(model, wav: torch.Tensor, chunk_s: int, device: str) -> np.ndarray:
    """(n_codebooks, n_frames) int16 codes of a (1, n) 24 kHz waveform.

    Encoded ``chunk_s`` seconds at a time, each with ``CONTEXT_S`` seconds of audio before
    it re-encoded and its codes dropped, so the encoder's convolutions and LSTM start
    each chunk warmed up and activations stay bounded by the chunk length.
    """
    n_frames = math.ceil(wav.shape[1] / HOP)
    model = model.to(device)
    chunks = []
    step, context = chunk_s * SAMPLE_RATE, CONTEXT_S * SAMPLE_RATE
    with torch.no_grad(), progress("audio (EnCodec)", wav.shape[1] / SAMPLE_RATE, "s of audio") as advance:
        for start in range(0, wav.shape[1], step):
            lo = max(start - context, 0)
            piece = wav[:, lo:start + step].to(device)
            codes = model.encode(piece[None])[0][0][0]  # (n_q, frames)
            chunks.append(codes[:, (start - lo) // HOP:].cpu().numpy().astype(np.int16))
            advance(min(step, wav.shape[1] - start) / SAMPLE_RATE)
    return np.concatenate(chunks, axis=1)[:, :n_frames]


# ----------------------------------------------------------------------- TR framing
def frames_per_tr(tr: float) -> int:
    return int(math.floor(tr * FRAME_RATE + 1e-9))


def tr_frame_starts(grid: TrGrid, audio_start_s: float) -> np.ndarray:
    """(n_trs,) index of each TR's first code frame: the first frame centre >= window start."""
    position = (grid.window_starts() - audio_start_s) * FRAME_RATE - 0.5
    return np.ceil(position - 1e-9).astype(np.int64)


def frames_on_grid(frames: np.ndarray, grid: TrGrid, audio_start_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(channels, n_frames) at 75 Hz -> (n_trs, channels, frames_per_tr), valid (n_trs,)."""
    per_tr = frames_per_tr(grid.tr)
    starts = tr_frame_starts(grid, audio_start_s)
    index = starts[:, None] + np.arange(per_tr)[None, :]
    inside = (index >= 0) & (index < frames.shape[1])
    gathered = frames[:, np.clip(index, 0, frames.shape[1] - 1)]  # (channels, n_trs, per_tr)
    valid = inside.all(axis=1)
    gathered = np.where(valid[None, :, None], gathered, 0)  # a TR partly outside is padding as a whole
    return np.ascontiguousarray(np.transpose(gathered, (1, 0, 2))), valid


# ---------------------------------------------------------------------------- nodes
def extract_audio(path: Path, grid: TrGrid, model: str, bandwidth: float, weights: str | None,
                  seed: int, chunk_s: int = 10, device: str = "cpu", codebooks: np.ndarray | None = None
                  ) -> TrAligned:
    """The soundtrack on the TR grid: EnCodec codes (``model='encodec_24khz'``,
    int16 (n_trs, n_codebooks, frames_per_tr)) or a log-mel spectrogram (``'mel'``,
    float32 (n_trs, 64, frames_per_tr), 75 frames/s).

    With random weights the codebooks used are kept in ``extras["codebooks"]``; give them
    back as ``codebooks`` to code another movie as this one was (in silico)."""
    samples, rate, start_s = decode_soundtrack(path)
    wav = to_model_rate(samples, rate)
    duration = start_s + wav.shape[1] / SAMPLE_RATE
    if model == "mel":
        frames = log_mel(wav)
        meta_extra, extras = {"units": "log mel power", "n_mels": MEL_BANDS}, {}
    else:
        encoder = codec_for(wav, bandwidth, weights, seed, codebooks)
        frames = encode_chunked(encoder, wav, chunk_s, device)
        extras = {"codebooks": used_codebooks(encoder.cpu())} if weights in (None, RANDOM) else {}
        if frames.shape[0] != n_codebooks(bandwidth):
            raise RuntimeError(f"EnCodec produced {frames.shape[0]} codebooks at {bandwidth} kbps, "
                               f"expected {n_codebooks(bandwidth)}")
        books = ("the training movie's k-means codebooks" if codebooks is not None
                 else "k-means codebooks on this soundtrack's first 10 s")
        meta_extra = {"units": "EnCodec code indices (0..1023)", "bandwidth_kbps": bandwidth,
                      "n_codebooks": int(frames.shape[0]), "weights": describe_weights(weights, f"random (seeded), {books}"),
                      "chunk_s": chunk_s, "context_s": CONTEXT_S}
    values, valid = frames_on_grid(frames, grid, start_s)
    return TrAligned(values=values, valid=valid, meta={
        "modality": "audio", "kind": model, "grid": grid.describe(), "source": str(path),
        "frame_rate_hz": FRAME_RATE, "frames_per_tr": frames_per_tr(grid.tr), "audio_start_s": start_s,
        "framing": "each TR: floor(tr*75) frames from the first frame centre at or after its window start",
        "layout": "(n_trs, channels, frames_per_tr)", "notes": alignment_notes("audio", valid, grid, duration),
        **meta_extra}, extras=extras)


def log_mel(wav: torch.Tensor) -> np.ndarray:
    """(64, n_frames) log-mel power at 75 frames/s of a (1, n) 24 kHz waveform."""
    import torchaudio

    transform = torchaudio.transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=1024, hop_length=HOP,
                                                     n_mels=MEL_BANDS, center=False)
    padded = torch.nn.functional.pad(wav, (0, 1024))  # one frame per hop, aligned to the hop start
    mel = transform(padded)[0, :, : math.ceil(wav.shape[1] / HOP)]
    return torch.log(mel + 1e-6).numpy().astype(np.float32)

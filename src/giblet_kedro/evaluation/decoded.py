"""Decoded stimulus made readable: audio codes through EnCodec's decoder, text
embeddings as the nearest annotation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from giblet_kedro.evaluation.model import TrainedModel
from giblet_kedro.spec.schema import StimulusSpec


def argmax_codes(outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """(n, n_q, T) codes from (n, n_q, 1024, T) logits; None without codes."""
    logits = outputs.get("audio")
    return None if logits is None or logits.ndim != 4 else logits.argmax(axis=2)


def decoded_audio(codes: dict[str, np.ndarray | None], valid: np.ndarray, trained: TrainedModel,
                  stimulus: StimulusSpec | None, seed: int) -> dict[str, np.ndarray]:
    """Waveforms of the valid rows' codes, in TR order, through EnCodec's decoder (rebuilt
    exactly as the stimulus stage built the encoder). Empty without codes."""
    if stimulus is None or stimulus.audio is None or not trained.job.shapes.audio_is_codes or not valid.any():
        return {}
    from giblet_kedro.stimulus.audio import codec_for, codes_to_audio, decode_soundtrack, to_model_rate

    audio = stimulus.audio
    samples, rate, _ = decode_soundtrack(Path(audio.path))
    codec = codec_for(to_model_rate(samples, rate), audio.bandwidth, audio.weights, seed)

    def waveform(per_tr: np.ndarray) -> np.ndarray:  # (n, n_q, T) -> one stretch of frames
        return codes_to_audio(codec, np.concatenate(list(per_tr[valid].astype(np.int64)), axis=1))

    return {name: waveform(value) for name, value in codes.items() if value is not None}


def nearest_annotations(texts: dict[str, np.ndarray], true: np.ndarray, trained: TrainedModel,
                        rows: np.ndarray, stimulus: StimulusSpec, seed: int, title: str) -> str:
    """A Markdown table: for each row, the annotation whose CLIP embedding is nearest
    (cosine, centred on the annotations' mean) to each decoded text embedding.

    texts : label -> (n, D) decoded embeddings in model units; true : (n, D) the targets.
    A segment held longer than the HRF keeps its embedding through the convolution (the
    kernel sums to 1), so decoded features compare with raw annotation embeddings.
    """
    from giblet_kedro.stimulus.text import build_clip, embed_texts, read_segments

    spec = stimulus.text
    segments = read_segments(Path(spec.annotations), spec.start, spec.end, spec.columns, spec.run_onsets_s)
    distinct = list(dict.fromkeys(segments["text"].tolist()))
    clip, tokenizer = build_clip(spec.model, spec.weights, seed)
    candidates = embed_texts(distinct, clip, tokenizer, 64, "cpu").astype(np.float64)
    stats = trained.stats["text"]
    centre = candidates.mean(0)
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)  # noqa: E731

    def nearest(standardized: np.ndarray) -> list[str]:
        raw = (standardized.astype(np.float64) * stats.scale + stats.mean).reshape(len(standardized), -1) - centre
        return [distinct[i] for i in (unit(raw) @ unit(candidates - centre).T).argmax(1)]

    columns = {"true (nearest to the feature)": nearest(true)} | {label: nearest(v) for label, v in texts.items()}
    lines = [f"# Decoded text: {title}\n", "| TR | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for k, row in enumerate(rows):
        lines.append(f"| {int(row)} | " + " | ".join(values[k] for values in columns.values()) + " |")
    return "\n".join(lines) + "\n"

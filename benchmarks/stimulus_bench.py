"""Stimulus extractors vs direct calls of the same libraries, same input, same run.

For each modality the pipeline's extractor (decode, batching, chunking, TR framing
included) is timed against the plainest direct use of the library it wraps:

- video: PyAV decode of the whole movie, every frame resized to the spec size
  (``frame.reformat``) and scaled to float -- vs ``extract_frames``;
- audio: PyAV decode, EnCodec's ``convert_audio``, one ``model.encode`` of the whole
  waveform, same weights -- vs ``extract_audio`` (10 s chunks with 1 s of context);
- text: open_clip build, tokenizer and ``encode_text`` over every segment in batches --
  vs ``extract_text`` (read table, embed distinct texts, mean per TR).

Prints throughput (seconds of movie or audio per second, texts per second) and the
overhead ratio pipeline/direct (target: at most 1.1). Usage::

    python benchmarks/stimulus_bench.py [--movie PATH] [--repeats 2] [--segments 400]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch

from giblet_kedro.stimulus import audio, text
from giblet_kedro.stimulus.aligned import TrGrid
from giblet_kedro.stimulus.video import extract_frames

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MOVIE = REPO.parent / "shared" / "data" / "media" / "big_buck_bunny_0_30.webm"
SIZE, FRAMES_PER_TR, TR = (160, 90), 3, 1.5


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def direct_video(path: Path) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            rgb = frame.reformat(width=SIZE[0], height=SIZE[1], format="rgb24", interpolation="AREA").to_ndarray()
            np.transpose(rgb, (2, 0, 1)).astype(np.float32) / 255.0


def direct_audio(path: Path, model) -> None:
    from encodec.utils import convert_audio

    samples, rate, _ = audio.decode_soundtrack(path)
    wav = convert_audio(torch.from_numpy(samples)[None], rate, audio.SAMPLE_RATE, 1)
    with torch.no_grad():
        model.encode(wav[None])


def direct_text(texts: list[str]) -> None:
    import open_clip

    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            model.encode_text(tokenizer(texts[i:i + 64]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movie", type=Path, default=DEFAULT_MOVIE)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--segments", type=int, default=400)
    args = parser.parse_args()
    if not args.movie.is_file():
        raise SystemExit(f"movie not found: {args.movie} (give --movie PATH to a movie with sound)")

    with av.open(str(args.movie)) as container:
        duration = float(container.duration / av.time_base)
    grid = TrGrid.single(tr=TR, start=0, stop=int(duration // TR))
    rows = []

    video_direct = best_of(args.repeats, lambda: direct_video(args.movie))
    video_pipeline = best_of(args.repeats, lambda: extract_frames(args.movie, grid, SIZE, FRAMES_PER_TR))
    rows.append(("video frames", "s of movie/s", duration, video_pipeline, video_direct))

    with tempfile.TemporaryDirectory() as tmp:
        samples, rate, _ = audio.decode_soundtrack(args.movie)
        wav = audio.to_model_rate(samples, rate)
        model = audio.build_encodec(3.0, None, seed=0, init_audio=wav[:, : 10 * audio.SAMPLE_RATE])
        weights = Path(tmp) / "encodec.th"
        torch.save(model.state_dict(), weights)  # both sides use the same initialised weights
        audio_direct = best_of(args.repeats, lambda: direct_audio(args.movie, model))
        audio_pipeline = best_of(args.repeats, lambda: audio.extract_audio(
            args.movie, grid, "encodec_24khz", 3.0, str(weights), seed=0))
        rows.append(("audio (EnCodec 3 kbps)", "s of audio/s", len(samples) / rate, audio_pipeline, audio_direct))

        texts = [f"scene {i}: a detective walks through room {i % 37} while it rains" for i in range(args.segments)]
        table = Path(tmp) / "segments.csv"
        starts = np.arange(args.segments) * 2.0
        pd.DataFrame({"start": starts, "end": starts + 2.0, "scene": texts}).to_csv(table, index=False)
        text_grid = TrGrid.single(tr=TR, start=0, stop=int(starts[-1] // TR))
        text_direct = best_of(args.repeats, lambda: direct_text(texts))
        text_pipeline = best_of(args.repeats, lambda: text.extract_text(
            table, text_grid, "start", "end", ["scene"], "ViT-B-32", None, seed=0))
        rows.append(("text (CLIP ViT-B-32)", "texts/s", args.segments, text_pipeline, text_direct))

    print(f"\ninput: {args.movie.name} ({duration:.1f} s), {args.segments} distinct annotation texts; "
          f"best of {args.repeats}; torch threads {torch.get_num_threads()}")
    print(f"{'extractor':<24}{'unit':<15}{'pipeline':>10}{'direct':>10}{'overhead ratio':>16}")
    worst = 0.0
    for name, unit, amount, pipeline_s, direct_s in rows:
        ratio = pipeline_s / direct_s
        worst = max(worst, ratio)
        print(f"{name:<24}{unit:<15}{amount / pipeline_s:>10.1f}{amount / direct_s:>10.1f}{ratio:>16.2f}")
    print(f"target: overhead ratio <= 1.10 for each ({'met' if worst <= 1.10 else 'MISSED'}; worst {worst:.2f})")


if __name__ == "__main__":
    main()

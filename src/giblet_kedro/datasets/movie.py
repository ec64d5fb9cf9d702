"""A movie file (video + soundtrack) written and probed with PyAV (no ffmpeg binary)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from kedro.io import AbstractDataset
from kedro_datasets._typing import JSONPreview

from giblet_kedro.datasets.atomic import atomic_path, intact
from giblet_kedro.datasets.preview import to_json

AUDIO_FRAME = 1024


@dataclass(frozen=True)
class Movie:
    """Raw movie content.

    frames : (n_frames, height, width, 3) uint8 RGB
    fps : frames per second
    audio : (n_samples,) float32 mono in [-1, 1], or None
    sample_rate : audio samples per second
    """

    frames: np.ndarray
    fps: int
    audio: np.ndarray | None
    sample_rate: int


@dataclass(frozen=True)
class MovieInfo:
    """What a movie file holds, read from its container (no frame is decoded)."""

    path: Path
    duration_s: float
    width: int
    height: int
    fps: float
    audio_rate: int | None


def write_movie(movie: Movie, path: Path) -> None:
    height, width = movie.frames.shape[1:3]
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=movie.fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.bit_rate = 2_000_000
        audio = None
        if movie.audio is not None:
            audio = container.add_stream("aac", rate=movie.sample_rate, layout="mono")
        for frame in movie.frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            samples = np.asarray(movie.audio, dtype=np.float32)
            for start in range(0, len(samples), AUDIO_FRAME):
                chunk = np.ascontiguousarray(samples[None, start:start + AUDIO_FRAME])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = movie.sample_rate, start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)


def probe_movie(path: Path) -> MovieInfo:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = float(container.duration / av.time_base) if container.duration else 0.0
        return MovieInfo(path=path, duration_s=duration, width=video.codec_context.width,
                         height=video.codec_context.height, fps=float(video.average_rate or 0),
                         audio_rate=audio.codec_context.sample_rate if audio else None)


class MovieDataset(AbstractDataset[MovieInfo, Movie]):
    """Save a :class:`Movie` as MP4 (MPEG-4 video, AAC audio); load its :class:`MovieInfo`.

    Decoding frames and audio for features is the stimulus stage's job; it streams.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> MovieInfo:
        return probe_movie(self._filepath)

    def save(self, data: Movie) -> None:
        write_movie(data, self._filepath)

    def _exists(self) -> bool:
        return intact(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def preview(self) -> JSONPreview:
        """kedro-viz: duration, frame size and rate, audio rate."""
        if not self._filepath.is_file():
            return JSONPreview('{"status": "not computed yet"}')
        return JSONPreview(to_json(dataclasses.asdict(self.load())))

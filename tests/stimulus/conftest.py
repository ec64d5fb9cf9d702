"""Movies made for the tests: each frame's grey level encodes its index."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

SHARED_MOVIE = Path(__file__).resolve().parents[3] / "shared" / "data" / "media" / "big_buck_bunny_0_30.webm"


def level(index: int) -> int:
    return 20 + 10 * (index % 22)  # distinct grey levels, far apart after lossy coding


def write_movie(path: Path, times_s: list[float], size=(32, 16), audio_s: float | None = None,
                rate: int = 16000, tone_hz: float = 440.0) -> Path:
    """Flat frames shown at ``times_s`` (variable frame rate allowed); optional tone."""
    width, height = size
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("mpeg4", rate=1000)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = Fraction(1, 1000)  # millisecond timestamps
        video.bit_rate = 4_000_000
        audio = container.add_stream("aac", rate=rate, layout="mono") if audio_s else None
        for index, t in enumerate(times_s):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), level(index), np.uint8), format="rgb24")
            frame.pts = int(round(t * 1000))
            frame.time_base = video.time_base
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            n = int(audio_s * rate)
            wave = (0.3 * np.sin(2 * np.pi * tone_hz * np.arange(n) / rate)
                    * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * np.arange(n) / rate))).astype(np.float32)
            for start in range(0, n, 1024):
                chunk = np.ascontiguousarray(wave[None, start:start + 1024])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


@pytest.fixture
def real_movie() -> Path:
    if not SHARED_MOVIE.is_file():
        pytest.skip("../shared/data/media is not beside this checkout")
    return SHARED_MOVIE

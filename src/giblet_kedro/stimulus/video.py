"""Video frames on the TR grid, decoded by timestamp (PyAV), never by stretching.

For TR ``i`` with window ``[w, w + tr)``, ``frames_per_tr`` sample times are the centres
of equal sub-windows, ``w + (k + 0.5) * tr / frames_per_tr``. Each takes the frame that
is on screen at that time (the last frame whose timestamp is at or before it), so
variable frame rates and any movie length are handled by timestamps. Decoding streams:
only the output array and the frame on screen are held, and only frames that are used are
converted (resized with swscale's area filter). Frames are kept as the decoder gives them,
uint8 RGB (4x smaller than float32: 122 MB instead of 490 MB for the lab's 946 TRs at
160x90, 3 frames per TR); the HRF step (:func:`to_unit_range`) turns them into float32
in [0, 1], the model's input.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from giblet_kedro.errors import InputDataError
from giblet_kedro.progress import progress
from giblet_kedro.stimulus.aligned import TrAligned, TrGrid, alignment_notes
from giblet_kedro.stimulus.media import open_media


def sample_times(grid: TrGrid, frames_per_tr: int) -> np.ndarray:
    """(n_trs, frames_per_tr) movie seconds at which frames are taken."""
    offsets = (np.arange(frames_per_tr) + 0.5) * grid.tr / frames_per_tr
    return grid.window_starts()[:, None] + offsets[None, :]


def open_video(path: Path, label: str):
    container = open_media(path, label)
    if not container.streams.video:
        container.close()
        raise InputDataError(f"{label}: {path} has no video stream")
    return container


def _to_chw(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    return np.transpose(rgb, (2, 0, 1))


def to_unit_range(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB frames (as :func:`extract_frames` stores them) as float32 in [0, 1]."""
    return np.asarray(frames, dtype=np.float32) / np.float32(255.0)


def extract_frames(path: Path, grid: TrGrid, size: tuple[int, int], frames_per_tr: int,
                   label: str = "stimulus.video.path") -> TrAligned:
    """Decode ``path`` once and return frames on the TR grid.

    Returns
    -------
    TrAligned
        values (n_trs, frames_per_tr, 3, height, width) uint8 RGB (0-255); a TR is valid
        when every one of its sample times falls inside the movie (others are zero).
    """
    times = sample_times(grid, frames_per_tr).ravel()
    width, height = size
    out = np.zeros((times.size, 3, height, width), dtype=np.uint8)
    filled = np.zeros(times.size, dtype=bool)
    container = open_video(path, label)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        next_target, on_screen, on_screen_t, converted = 0, None, None, None
        last_t = 0.0
        with progress("video frames", grid.end_s, "s of movie") as advance:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else last_t + 1.0 / rate
                while next_target < times.size and times[next_target] < t:
                    if on_screen is not None:
                        if converted is None:
                            converted = _to_chw(on_screen, size)
                        out[next_target], filled[next_target] = converted, True
                    next_target += 1
                advance(max(t - last_t, 0.0))
                on_screen, on_screen_t, converted, last_t = frame, t, None, t
                if next_target >= times.size:
                    break
            movie_end = (on_screen_t or 0.0) + 1.0 / rate
            while next_target < times.size and times[next_target] < movie_end and on_screen is not None:
                if converted is None:
                    converted = _to_chw(on_screen, size)
                out[next_target], filled[next_target] = converted, True
                next_target += 1
            if on_screen is None:
                raise InputDataError(f"{label}: {path} has a video stream but no decodable frame")
            duration = float(container.duration / av.time_base) if container.duration else movie_end
    except av.FFmpegError as exc:
        raise InputDataError(f"{label}: error while decoding {path}: {exc}") from None
    finally:
        container.close()

    valid = filled.reshape(grid.n_trs, frames_per_tr).all(axis=1)
    values = out.reshape(grid.n_trs, frames_per_tr, 3, height, width)
    values[~valid] = 0  # a TR only partly inside the movie is padding as a whole
    notes = alignment_notes("video", valid, grid, max(duration, movie_end))
    return TrAligned(
        values=values,
        valid=valid,
        meta={"modality": "video", "grid": grid.describe(), "source": str(path), "size": list(size),
              "frames_per_tr": frames_per_tr, "frame_rate": rate, "movie_duration_s": duration,
              "units": "RGB uint8 (0-255)", "layout": "(n_trs, frames_per_tr, 3, height, width)", "notes": notes},
    )

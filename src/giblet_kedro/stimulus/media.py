"""Opening movie and sound files (PyAV), with errors that name the spec key and file."""

from __future__ import annotations

from pathlib import Path

import av

from giblet_kedro.errors import InputDataError


def open_media(path: Path, label: str):
    """An open PyAV container; a missing or undecodable file is an :class:`InputDataError`."""
    try:
        return av.open(str(path))
    except FileNotFoundError:
        raise InputDataError(f"{label}: file not found: {path}") from None
    except av.FFmpegError as exc:
        raise InputDataError(f"{label}: {path} is not a readable movie ({exc}); "
                             "accepted: any format FFmpeg decodes") from None


def media_duration_s(path: Path, label: str) -> float:
    """Seconds of ``path`` (the container's duration, else its longest stream's)."""
    container = open_media(path, label)
    try:
        if container.duration:
            return float(container.duration / av.time_base)
        lengths = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
    finally:
        container.close()
    if not lengths:
        raise InputDataError(f"{label}: {path} does not state its duration; accepted: a movie FFmpeg can time")
    return max(lengths)

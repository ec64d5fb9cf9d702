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

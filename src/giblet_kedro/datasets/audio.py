"""Decoded audio as WAV files in one folder (16-bit PCM), each written atomically; an
``index.json`` written last lists them, so the folder counts as present only when whole."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset
from kedro_datasets._typing import JSONPreview
from scipy.io import wavfile

from giblet_kedro.datasets.atomic import atomic_path, intact

INDEX = "index.json"


class WavFilesDataset(AbstractDataset[dict[str, np.ndarray], dict[str, np.ndarray]]):
    """``{name: (n_samples,) float32 in [-1, 1]}`` <-> ``<folder>/<name>.wav`` at ``rate`` Hz."""

    def __init__(self, folder: str, rate: int = 24_000, metadata: dict[str, Any] | None = None):
        self._folder = Path(folder)
        self._rate = int(rate)
        self.metadata = metadata

    def _files(self) -> list[str]:
        return json.loads((self._folder / INDEX).read_text())["files"]

    def load(self) -> dict[str, np.ndarray]:
        out = {}
        for name in self._files():
            _, samples = wavfile.read(self._folder / name)
            out[name.removesuffix(".wav")] = samples.astype(np.float32) / 32767.0
        return out

    def save(self, data: dict[str, np.ndarray]) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        names = []
        for key, samples in data.items():
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".wav"
            pcm = (np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * 32767).astype(np.int16)
            with atomic_path(self._folder / name) as tmp:
                wavfile.write(tmp, self._rate, pcm)
            names.append(name)
        with atomic_path(self._folder / INDEX) as tmp:
            tmp.write_text(json.dumps({"rate_hz": self._rate, "files": names}, indent=1))

    def _exists(self) -> bool:
        index = self._folder / INDEX
        return intact(index) and intact(*(self._folder / name for name in self._files()))

    def _describe(self) -> dict[str, Any]:
        return {"folder": str(self._folder), "rate": self._rate}

    def preview(self) -> JSONPreview:
        """kedro-viz: the files and their durations."""
        if not (self._folder / INDEX).is_file():
            return JSONPreview('{"status": "not computed yet"}')
        sizes = {name: round(((self._folder / name).stat().st_size - 44) / 2 / self._rate, 2) for name in self._files()}
        return JSONPreview(json.dumps({"rate_hz": self._rate, "seconds": sizes}, indent=1))

"""Array datasets: a memory-mappable ``.npy``, a dict of arrays (``.npz`` or safetensors)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from kedro.io import AbstractDataset
from kedro_datasets._typing import HTMLPreview, ImagePreview, JSONPreview, TablePreview
from safetensors.numpy import load_file, save_file

from giblet_kedro.datasets.atomic import atomic_path, intact
from giblet_kedro.datasets.preview import array_summary, arrays_summary, to_json
from giblet_kedro.fmri.kept import KeptVoxels

NOT_YET = '{"status": "not computed yet: run the pipeline that writes it"}'


class NpyDataset(AbstractDataset[np.ndarray, np.ndarray]):
    """One array in ``.npy`` format; ``load`` memory-maps it read-only by default, so
    several processes share one copy in the page cache instead of each holding its own."""

    def __init__(self, filepath: str, mmap_mode: Literal["r", "c"] | None = "r",
                 metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._mmap_mode = mmap_mode
        self.metadata = metadata

    def load(self) -> np.ndarray:
        return np.load(self._filepath, mmap_mode=self._mmap_mode, allow_pickle=False)

    def save(self, data: np.ndarray) -> None:
        with atomic_path(self._filepath) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.asarray(data), allow_pickle=False)

    def _exists(self) -> bool:
        return intact(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "mmap_mode": self._mmap_mode}

    def preview(self) -> JSONPreview:
        """kedro-viz: shape, dtype and value range."""
        if not self._filepath.is_file():
            return JSONPreview(NOT_YET)
        return JSONPreview(to_json(array_summary(np.load(self._filepath, mmap_mode="r", allow_pickle=False))))


class KeptVoxelsDataset(AbstractDataset[KeptVoxels, KeptVoxels]):
    """The first pass's copy of a run's voxels (:class:`~giblet_kedro.fmri.kept.KeptVoxels`):
    the values as an :class:`NpyDataset` (memory-mapped on load), and beside it
    ``<stem>.index.npz`` with their columns and first TR, written last (a pair without
    its index does not exist)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._values = NpyDataset(filepath)
        path = Path(filepath)
        self._index = NpzDataset(str(path.with_name(path.stem + ".index.npz")))
        self.metadata = metadata

    def load(self) -> KeptVoxels:
        index = self._index.load()
        return KeptVoxels(self._values.load(), index["columns"], int(index["first_tr"]))

    def save(self, data: KeptVoxels) -> None:
        self._values.save(data.values)
        self._index.save({"columns": np.asarray(data.columns, dtype=np.int64), "first_tr": np.array(data.first_tr)})

    def _exists(self) -> bool:
        return self._values.exists() and self._index.exists()

    def _describe(self) -> dict[str, Any]:
        return self._values._describe()

    def preview(self) -> JSONPreview:
        """kedro-viz: shape, dtype and value range of the kept values."""
        return self._values.preview()


class NpzArrays(dict):
    """The arrays of an ``.npz``, and the file they came from (``filename``, as a memmap
    has): a training job refers to its loss statistics by path."""

    filename: str = ""


class NpzDataset(AbstractDataset[dict[str, np.ndarray], dict[str, np.ndarray]]):
    """A dict of named arrays in one ``.npz`` (no pickles: strings are unicode arrays)."""

    def __init__(self, filepath: str, compressed: bool = False, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._compressed = compressed
        self.metadata = metadata

    def load(self) -> dict[str, np.ndarray]:
        with np.load(self._filepath, allow_pickle=False) as archive:
            arrays = NpzArrays({key: archive[key] for key in archive.files})
        arrays.filename = str(self._filepath)
        return arrays

    def save(self, data: dict[str, np.ndarray]) -> None:
        writer = np.savez_compressed if self._compressed else np.savez
        with atomic_path(self._filepath) as tmp, open(tmp, "wb") as handle:
            writer(handle, **{key: np.asarray(value) for key, value in data.items()})

    def _exists(self) -> bool:
        return intact(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "compressed": self._compressed}

    def preview(self) -> JSONPreview:
        """kedro-viz: each array's shape and range (normalization stats: subjects, voxels)."""
        if not self._filepath.is_file():
            return JSONPreview(NOT_YET)
        with np.load(self._filepath, allow_pickle=False, mmap_mode="r") as archive:
            return JSONPreview(to_json(arrays_summary({key: archive[key] for key in archive.files})))


class SafetensorsDataset(AbstractDataset[dict[str, np.ndarray], dict[str, np.ndarray]]):
    """A dict of named numeric arrays in one safetensors file (safe to load: no code)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict[str, np.ndarray]:
        return load_file(self._filepath)

    def save(self, data: dict[str, np.ndarray]) -> None:
        with atomic_path(self._filepath) as tmp:
            save_file({key: np.ascontiguousarray(value) for key, value in data.items()}, tmp)

    def _exists(self) -> bool:
        return intact(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def preview(self) -> JSONPreview:
        """kedro-viz: each array's shape and range."""
        if not self._filepath.is_file():
            return JSONPreview(NOT_YET)
        return JSONPreview(to_json(arrays_summary(self.load())))


class CsvTableDataset(AbstractDataset[pd.DataFrame, pd.DataFrame]):
    """A table as CSV, written atomically (kedro-datasets' CSVDataset writes in place)."""

    def __init__(self, filepath: str, dtype: dict[str, str] | None = None,
                 metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._dtype = dtype
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        return pd.read_csv(self._filepath, dtype=self._dtype)

    def save(self, data: pd.DataFrame) -> None:
        with atomic_path(self._filepath) as tmp:
            data.to_csv(tmp, index=False)

    def _exists(self) -> bool:
        return intact(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def preview(self, nrows: int = 20) -> TablePreview:
        """kedro-viz: the first rows."""
        if not self._filepath.is_file():
            return TablePreview({"index": [], "columns": ["status"], "data": []})
        table = self.load().head(nrows)
        return TablePreview({"index": table.index.tolist(), "columns": [str(c) for c in table.columns],
                             "data": table.astype(object).where(table.notna(), None).values.tolist()})


class ExcelTableDataset(CsvTableDataset):
    """A table as ``.xlsx`` (openpyxl), written atomically."""

    def load(self) -> pd.DataFrame:
        return pd.read_excel(self._filepath, dtype=self._dtype)

    def save(self, data: pd.DataFrame) -> None:
        with atomic_path(self._filepath) as tmp:
            data.to_excel(tmp, index=False)


class JsonDataset(AbstractDataset[dict, dict]):
    """A JSON report, written atomically."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict:
        return json.loads(self._filepath.read_text())

    def save(self, data: dict) -> None:
        with atomic_path(self._filepath) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))

    def _exists(self) -> bool:
        return intact(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def preview(self) -> JSONPreview:
        """kedro-viz: the report itself."""
        return JSONPreview(self._filepath.read_text() if self._filepath.is_file() else NOT_YET)


class TextDataset(AbstractDataset[str, str]):
    """A text file (e.g. a Markdown summary), written atomically."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> str:
        return self._filepath.read_text()

    def save(self, data: str) -> None:
        with atomic_path(self._filepath) as tmp:
            tmp.write_text(data)

    def _exists(self) -> bool:
        return intact(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def preview(self) -> HTMLPreview:
        """kedro-viz: an HTML report as it is; other text (Markdown) in a <pre> block."""
        if not self._filepath.is_file():
            return HTMLPreview("<p>not computed yet: run the pipeline that writes it</p>")
        text = self._filepath.read_text()
        return HTMLPreview(text if self._filepath.suffix == ".html" else f"<pre>{html.escape(text)}</pre>")


class FigureDataset(TextDataset):
    """A matplotlib figure saved as PNG, atomically; loads the PNG's bytes."""

    def load(self) -> bytes:  # type: ignore[override]
        return self._filepath.read_bytes()

    def save(self, data) -> None:  # type: ignore[override]
        import matplotlib.pyplot as plt

        with atomic_path(self._filepath) as tmp:
            data.savefig(tmp, format="png", dpi=110)
        plt.close(data)

    def preview(self) -> ImagePreview:  # type: ignore[override]
        """kedro-viz: the picture (base64 PNG)."""
        if not self._filepath.is_file():
            return ImagePreview("")
        return ImagePreview(base64.b64encode(self._filepath.read_bytes()).decode())


class FiguresDataset(AbstractDataset[dict, dict[str, bytes]]):
    """Several matplotlib figures, each saved as ``<folder>/<file>`` PNG (``files``: name ->
    file name), atomically; loads name -> the PNG's bytes. A figure named in ``optional``
    may be left out (e.g. world-space views of data that are not in MNI space); a ``str``
    value (an HTML page) is written as text."""

    def __init__(self, folder: str, files: dict[str, str], optional: list[str] | None = None,
                 metadata: dict[str, Any] | None = None):
        self._folder = Path(folder)
        self._files = dict(files)
        self._optional = set(optional or [])
        self.metadata = metadata

    def load(self) -> dict[str, bytes]:
        return {name: (self._folder / file).read_bytes() for name, file in self._files.items()
                if name not in self._optional or (self._folder / file).is_file()}

    def save(self, data: dict) -> None:
        import matplotlib.pyplot as plt

        unknown = sorted(set(data) - set(self._files))
        if unknown:
            raise ValueError(f"figures {unknown} have no file; known: {sorted(self._files)}")
        missing = sorted(set(self._files) - set(data) - self._optional)
        if missing:
            raise ValueError(f"figures {missing} are missing")
        for name, figure in data.items():
            with atomic_path(self._folder / self._files[name]) as tmp:
                if isinstance(figure, str):
                    tmp.write_text(figure, encoding="utf-8")
                    continue
                figure.savefig(tmp, format="png", dpi=110)
            plt.close(figure)

    def _exists(self) -> bool:
        return intact(*(self._folder / file for name, file in self._files.items() if name not in self._optional))

    def _describe(self) -> dict[str, Any]:
        return {"folder": str(self._folder), "files": self._files}

    def preview(self) -> HTMLPreview:
        """kedro-viz: every picture."""
        parts = [f'<p>{html.escape(name)}</p><img src="data:image/png;base64,'
                 f'{base64.b64encode((self._folder / file).read_bytes()).decode()}">'
                 for name, file in self._files.items() if (self._folder / file).is_file() and file.endswith(".png")]
        return HTMLPreview("".join(parts) or "<p>not computed yet: run the pipeline that writes it</p>")

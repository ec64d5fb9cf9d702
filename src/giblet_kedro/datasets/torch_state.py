"""A model state dict: saved atomically, loaded code-free (``weights_only``) and mmap-ed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedro.io import AbstractDataset
from kedro_datasets._typing import JSONPreview

from giblet_kedro.datasets.atomic import atomic_path, intact
from giblet_kedro.datasets.preview import to_json

if TYPE_CHECKING:
    import torch


class TorchStateDictDataset(AbstractDataset[dict, dict]):
    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    # torch is imported when a state is read or written, not when the catalog is built:
    # every run builds every dataset (kedro-mlflow), and importing torch costs ~1.5 s.
    def load(self) -> dict[str, torch.Tensor]:
        import torch

        return torch.load(self._filepath, map_location="cpu", weights_only=True, mmap=True)

    def save(self, data: dict[str, torch.Tensor]) -> None:
        import torch

        with atomic_path(self._filepath) as tmp:
            torch.save({k: v.detach().cpu().contiguous() for k, v in data.items()}, tmp)

    def _exists(self) -> bool:
        return intact(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def preview(self) -> JSONPreview:
        """kedro-viz: parameter count and each tensor's shape."""
        if not self._filepath.is_file():
            return JSONPreview('{"status": "not computed yet"}')
        state = self.load()
        return JSONPreview(to_json({"parameters": int(sum(t.numel() for t in state.values())),
                                    "tensors": {k: list(t.shape) for k, t in state.items()}}))


class TorchStateDictsDataset(TorchStateDictDataset):
    """Several models' state dicts by name (``{"1": state, "2": state}``) in one file;
    an empty dict when there are none."""

    def save(self, data: dict[str, dict[str, torch.Tensor]]) -> None:
        import torch

        with atomic_path(self._filepath) as tmp:
            torch.save({str(name): {k: v.detach().cpu().contiguous() for k, v in state.items()}
                        for name, state in data.items()}, tmp)

    def preview(self) -> JSONPreview:
        """kedro-viz: each model's parameter count."""
        if not self._filepath.is_file():
            return JSONPreview('{"status": "not computed yet"}')
        return JSONPreview(to_json({name: {"parameters": int(sum(t.numel() for t in state.values()))}
                                    for name, state in self.load().items()}))

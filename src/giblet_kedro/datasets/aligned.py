"""A TR-aligned stimulus cache: a folder with ``values.npy`` (memory-mapped on load),
``valid.npy``, ``meta.json`` and one ``extra_<name>.npy`` per extra array (listed in the
meta's ``extras``), replaced as a whole."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset
from kedro_datasets._typing import JSONPreview

from giblet_kedro.datasets.atomic import intact, record_digest, remove_stale_partials
from giblet_kedro.datasets.preview import array_summary, to_json
from giblet_kedro.stimulus.aligned import TrAligned

FILES = ("values.npy", "valid.npy", "meta.json")


class TrAlignedDataset(AbstractDataset[TrAligned, TrAligned]):
    """Save and load :class:`TrAligned` features; the folder appears complete or not at all."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._folder = Path(filepath)
        self.metadata = metadata

    def load(self) -> TrAligned:
        meta = json.loads((self._folder / "meta.json").read_text())
        return TrAligned(
            values=np.load(self._folder / "values.npy", mmap_mode="r", allow_pickle=False),
            valid=np.load(self._folder / "valid.npy", allow_pickle=False),
            meta=meta,
            extras={name: np.load(self._folder / f"extra_{name}.npy", allow_pickle=False)
                    for name in meta.get("extras", [])},
        )

    def save(self, data: TrAligned) -> None:
        self._folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self._folder.parent)
        staging = Path(tempfile.mkdtemp(dir=self._folder.parent, prefix=f".{self._folder.name}.partial-"))
        lock = open(staging / ".lock", "w")  # noqa: SIM115 - held until the folder is in place
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            np.save(staging / "values.npy", np.ascontiguousarray(data.values), allow_pickle=False)
            np.save(staging / "valid.npy", np.asarray(data.valid, dtype=bool), allow_pickle=False)
            for name, array in data.extras.items():
                np.save(staging / f"extra_{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            # the extras listed are the ones saved (a step may copy another cache's meta)
            meta = {key: value for key, value in data.meta.items() if key != "extras"}
            if data.extras:
                meta["extras"] = sorted(data.extras)
            (staging / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
            for name in (*FILES, *(f"extra_{name}.npy" for name in data.extras)):
                record_digest(staging / name, staging / name)
            (staging / ".lock").unlink()
            if self._folder.exists():  # same fingerprint recomputed (--recompute): swap
                trash = Path(tempfile.mkdtemp(dir=self._folder.parent, prefix=f".{self._folder.name}.old-"))
                os.replace(self._folder, trash / "old")
                os.replace(staging, self._folder)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, self._folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            lock.close()

    def _exists(self) -> bool:
        return intact(*(self._folder / name for name in FILES))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._folder)}

    def preview(self) -> JSONPreview:
        """kedro-viz: the values' shape and range, valid TRs, and the provenance (meta)."""
        if not self._exists():
            return JSONPreview('{"status": "not computed yet"}')
        aligned = self.load()
        return JSONPreview(to_json({"values": array_summary(aligned.values),
                                    "valid_trs": f"{int(aligned.valid.sum())} of {len(aligned.valid)}",
                                    "meta": aligned.meta}))

"""Confound tables (fMRIPrep TSV or SPM ``rp_*.txt``), keyed like the runs they clean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset

from giblet_kedro.fmri.clean import read_confound_table


class ConfoundTablesDataset(AbstractDataset[dict[str, pd.DataFrame], None]):
    """``{key: table}`` for ``{key: path}``; read-only (confounds are raw inputs).

    Keys are those of the runs they belong to (``"<subject>/<run>"``, or a subject id for
    held-out runs). No paths (cleaning off) loads as an empty dict.
    """

    def __init__(self, paths: dict[str, str], metadata: dict[str, Any] | None = None):
        self._paths = {str(k): Path(v) for k, v in dict(paths).items()}
        self.metadata = metadata

    def load(self) -> dict[str, pd.DataFrame]:
        return {key: read_confound_table(path, f"confound table {key!r}") for key, path in self._paths.items()}

    def save(self, data: None) -> None:
        raise NotImplementedError("confound tables are raw inputs; the pipeline never writes them")

    def _exists(self) -> bool:
        return all(p.is_file() for p in self._paths.values())

    def _describe(self) -> dict[str, Any]:
        return {"paths": {k: str(v) for k, v in self._paths.items()}}

"""Confound tables (fMRIPrep TSV or SPM ``rp_*.txt``), keyed like the runs they clean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.clean import read_confound_table


def strategy_table(image: str, strategy: str, options: dict[str, Any], label: str) -> pd.DataFrame:
    """nilearn's ``load_confounds_strategy`` for one fMRIPrep run, read raw (no demeaning
    over the whole run: the cleaning standardizes each split block on its own)."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    try:
        table, sample_mask = load_confounds_strategy(image, denoise_strategy=strategy, **{"demean": False, **options})
    except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
        raise InputDataError(f"{label}: nilearn's load_confounds_strategy('{strategy}') cannot read the confounds "
                             f"of {image}: {type(exc).__name__}: {exc}") from None
    table = table.reset_index(drop=True)
    table.attrs["sample_mask"] = None if sample_mask is None else [int(v) for v in sample_mask]
    return table


class ConfoundTablesDataset(AbstractDataset[dict[str, pd.DataFrame], None]):
    """``{key: table}`` for ``{key: path}``; read-only (confounds are raw inputs).

    Keys are those of the runs they belong to (``"<subject>/<run>"``, or a subject id for
    held-out runs). No paths (cleaning off) loads as an empty dict. With a ``strategy``
    (``fmri.clean.confounds.strategy``), each table is what nilearn's
    ``load_confounds_strategy`` selects for the run's image (``images``, same keys), and
    the volumes it censors are in ``table.attrs["sample_mask"]`` (kept volumes; None: all).
    """

    def __init__(self, paths: dict[str, str], images: dict[str, str] | None = None, strategy: str | None = None,
                 strategy_options: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None):
        self._paths = {str(k): Path(v) for k, v in dict(paths).items()}
        self._images = {str(k): str(v) for k, v in dict(images or {}).items()}
        self._strategy = strategy
        self._options = dict(strategy_options or {})
        self.metadata = metadata

    def load(self) -> dict[str, pd.DataFrame]:
        if self._strategy is None:
            return {key: read_confound_table(path, f"confound table {key!r}") for key, path in self._paths.items()}
        return {key: strategy_table(self._images[key], self._strategy, self._options, f"confound table {key!r}")
                for key in self._paths}

    def save(self, data: None) -> None:
        raise NotImplementedError("confound tables are raw inputs; the pipeline never writes them")

    def _exists(self) -> bool:
        return all(p.is_file() for p in self._paths.values())

    def _describe(self) -> dict[str, Any]:
        return {"paths": {k: str(v) for k, v in self._paths.items()}}

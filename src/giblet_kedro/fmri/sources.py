"""Each subject's runs as sources to stream: header, crop, the statistics that z-score it,
its cleaning operator and its censored TRs, from the spec, the split and the saved
statistics. Shared by
the fMRI stage and the evaluation's inter-subject pass."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri import censor
from giblet_kedro.fmri.clean import blockwise_operator, cleaning_operator, confound_matrix
from giblet_kedro.fmri.normalize import RunSource
from giblet_kedro.fmri.reader import RunHeader, mask_columns, read_header
from giblet_kedro.fmri.split import blocks
from giblet_kedro.spec.schema import FmriSpec, run_key

RunKey = tuple[str, str]  # (subject, run)


def run_label(fmri: FmriSpec, subject: str, run: str) -> str:
    """How errors name a run: ``subject '01'``, plus ``run '2'`` when there are several."""
    return f"subject {subject!r}" + (f" run {run!r}" if len(fmri.run_ids) > 1 else "")


def run_headers(runs: dict[str, nib.Nifti1Image], fmri: FmriSpec) -> dict[RunKey, RunHeader]:
    """Every (subject, run) header, in subject then run order."""
    keys = [(sid, run) for sid in fmri.subject_ids for run in fmri.run_ids]
    missing = [run_key(*k) for k in keys if run_key(*k) not in runs]
    if missing:
        raise InputDataError(f"no run loaded for {missing}")
    return {k: read_header(runs[run_key(*k)], run_label(fmri, *k)) for k in keys}


def run_confounds(fmri: FmriSpec, n_trs_file: int, crop: tuple[int, int], table: pd.DataFrame | None,
                  label: str) -> np.ndarray | None:
    """One run's confound regressors over its crop, ``(n_trs, k)``; None when the spec
    regresses no confounds. Raises naming ``label`` when the table does not fit."""
    spec = fmri.clean.confounds if fmri.clean else None
    if spec is None:
        return None
    if table is None:
        raise InputDataError(f"{label}: no confound table loaded")
    return confound_matrix(table, spec.columns, spec.skip_rows, n_trs_file, crop, label)


def run_censored(fmri: FmriSpec, crop: tuple[int, int], table: pd.DataFrame | None) -> np.ndarray:
    """Crop-relative TRs of one run that its confound strategy censors (scrubbing,
    non-steady-state volumes; see :mod:`giblet_kedro.fmri.censor`); empty without one."""
    spec = fmri.clean.confounds if fmri.clean else None
    if spec is None or table is None:
        return censor.EMPTY
    return censor.censored_trs(table.attrs.get("sample_mask"), spec.skip_rows, crop)


def run_operator(fmri: FmriSpec, n_trs_file: int, crop: tuple[int, int], table: pd.DataFrame | None,
                 label: str, run_blocks: list[slice] | None = None,
                 censored: np.ndarray | None = None) -> np.ndarray | None:
    """One run's cleaning operator over its crop (None when ``fmri.clean`` is off):
    each of ``run_blocks`` cleaned on its own (the whole crop at once when None, as for a
    held-out run, which is all test), ``censored`` TRs (crop-relative) left out."""
    if fmri.clean is None:
        return None
    matrix = run_confounds(fmri, n_trs_file, crop, table, label)
    if run_blocks is None:
        return cleaning_operator(crop[1] - crop[0], fmri.tr, fmri.clean, matrix, censored)
    return blockwise_operator(run_blocks, fmri.tr, fmri.clean, matrix, censored)


def saved_crops(stats: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """Run id -> its crop ``(start, stop)`` in file TRs, from the saved statistics (in
    concatenation order)."""
    return {str(run): (int(stats[f"run_{run}_crop"][0]), int(stats[f"run_{run}_crop"][1]))
            for run in np.atleast_1d(stats["run_ids"])}


def saved_censored(stats: dict[str, np.ndarray], subject: str, run: str) -> np.ndarray:
    """One run's crop-relative censored TRs, as the saved statistics recorded them."""
    return np.asarray(stats.get(censor.stats_key(subject, run), censor.EMPTY), dtype=np.int64)


def run_source(runs: dict[str, nib.Nifti1Image], confounds: dict[str, pd.DataFrame], stats: dict[str, np.ndarray],
               split: pd.DataFrame, fmri: FmriSpec, subject: str, run: str) -> RunSource:
    """One run with its saved stats, cleaning operator (block by block of the split) and
    censored TRs."""
    label = run_label(fmri, subject, run)
    header = read_header(runs[run_key(subject, run)], label)
    crop = saved_crops(stats)[run]
    censored = saved_censored(stats, subject, run)
    operator = run_operator(fmri, header.n_trs, crop, confounds.get(run_key(subject, run)),
                            f"{label}: fmri.clean.confounds", blocks(split, run), censored)
    return RunSource(header, crop, stats[f"subject_{subject}_run_{run}_mean"],
                     stats[f"subject_{subject}_run_{run}_std"], operator, censored)


def subject_sources(runs: dict[str, nib.Nifti1Image], confounds: dict[str, pd.DataFrame],
                    stats: dict[str, np.ndarray], split: pd.DataFrame,
                    fmri: FmriSpec) -> tuple[list[list[RunSource]], np.ndarray]:
    """Per subject (saved order), its runs with the saved stats and cleaning operators;
    and the mask's file-order columns."""
    run_headers(runs, fmri)  # every run is there
    ids = [str(s) for s in np.atleast_1d(stats["subject_ids"])]
    subjects = [[run_source(runs, confounds, stats, split, fmri, sid, run) for run in saved_crops(stats)]
                for sid in ids]
    return subjects, mask_columns(stats["mask"])

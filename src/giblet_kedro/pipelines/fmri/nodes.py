"""fMRI stage nodes: check runs -> split -> per-subject stats -> training tensor.

Nodes receive lazy NIfTI images (headers only) from the catalog and stream voxel data
through :mod:`giblet_kedro.fmri`; every output is a catalog dataset.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pandas as pd

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.checks import check_runs, check_space, check_tr, resolve_crop
from giblet_kedro.fmri.normalize import combine_subjects, zscore_run
from giblet_kedro.fmri.reader import RunHeader, mask_columns, read_header
from giblet_kedro.fmri.split import split_table, train_rows
from giblet_kedro.fmri.stats import (
    auto_mask,
    check_mask_usable,
    check_not_flat,
    lab_mask,
    subject_moments,
)
from giblet_kedro.spec.schema import FmriSpec

log = logging.getLogger(__name__)


def _headers(runs: dict[str, nib.Nifti1Image], fmri: FmriSpec) -> dict[str, RunHeader]:
    missing = [sid for sid in fmri.subject_ids if sid not in runs]
    if missing:
        raise InputDataError(f"no run loaded for subjects {missing}")
    return {sid: read_header(runs[sid], f"subject {sid!r}") for sid in fmri.subject_ids}


def inspect_runs(runs: dict[str, nib.Nifti1Image], fmri: FmriSpec) -> pd.DataFrame:
    """Check every run's header against the spec and the others; describe them.

    Returns the subject table: one row per subject with its file, grid, TR count, TR,
    storage type, scale factors and the TR range it contributes.
    """
    headers = _headers(runs, fmri)
    check_runs(list(headers.values()), fmri.tr)
    start, stop = resolve_crop(list(headers.values()), fmri.trs)
    return pd.DataFrame([
        {
            "subject_id": sid,
            "path": str(h.path),
            "nx": h.grid[0], "ny": h.grid[1], "nz": h.grid[2],
            "n_trs_file": h.n_trs,
            "tr_s": h.tr_seconds if h.tr_value else fmri.tr,
            "dtype": str(h.dtype),
            "scl_slope": h.slope,
            "scl_inter": h.inter,
            "crop_start": start,
            "crop_stop": stop,
        }
        for sid, h in headers.items()
    ])


def make_split(subjects: pd.DataFrame, fmri: FmriSpec) -> pd.DataFrame:
    """The per-TR split table of the crop (contiguous train, val, test blocks)."""
    start, stop = int(subjects["crop_start"].iloc[0]), int(subjects["crop_stop"].iloc[0])
    return split_table(start, stop, fmri.tr, fmri.split.val, fmri.split.test)


def _given_mask(mask_file: dict[str, nib.Nifti1Image], reference: RunHeader) -> np.ndarray:
    image = mask_file["mask"]
    label = f"fmri.mask ({image.get_filename()})"
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    check_space(label, data.shape, image.affine, "the runs", reference.grid, reference.affine)
    mask = np.asarray(data != 0) & np.isfinite(data)
    if not mask.any():
        raise InputDataError(f"{label} selects no voxel (all zero)")
    return mask


def compute_norm_stats(
    runs: dict[str, nib.Nifti1Image],
    mask_file: dict[str, nib.Nifti1Image],
    subjects: pd.DataFrame,
    split: pd.DataFrame,
    fmri: FmriSpec,
) -> dict[str, np.ndarray]:
    """Mask and per-subject mean/std over the training TRs: one streaming pass per subject.

    Returns the ``fmri_norm_stats`` arrays: ``subject_ids``; per subject
    ``subject_<id>_mean`` and ``subject_<id>_std`` of shape (n_voxels,), float64, in
    the C order of ``data[mask]``; ``mask`` (x, y, z) bool; ``affine`` (4, 4);
    ``ddof``; ``train_trs`` (file TR indices); ``crop``, ``tr``, ``mask_kind``.
    """
    headers = _headers(runs, fmri)
    reference = next(iter(headers.values()))
    crop = (int(subjects["crop_start"].iloc[0]), int(subjects["crop_stop"].iloc[0]))
    train = train_rows(split)
    ddof = fmri.zscore.ddof

    given = fmri.mask not in ("auto", "lab")
    given_mask = _given_mask(mask_file, reference) if given else None
    columns = mask_columns(given_mask) if given else None
    early_trs = min(fmri.lab_mask.first_trs, crop[1] - crop[0]) if fmri.mask == "lab" else None

    moments = {}
    for sid, header in headers.items():
        log.info("fmri stats: subject %s (%d TRs, %s)", sid, crop[1] - crop[0], header.path.name)
        moments[sid] = subject_moments(header, crop, train, ddof, fmri.chunk_trs, columns, early_trs)
        check_not_flat(sid, moments[sid], header.path)

    if given:
        mask = given_mask
        check_mask_usable(columns, moments, reference.grid, "given", indexed=True)
        pick = {sid: slice(None) for sid in moments}
    else:
        if fmri.mask == "auto":
            mask = auto_mask(moments, reference.grid)
        else:
            mask = lab_mask(moments, reference.grid, fmri.lab_mask.percentile,
                            fmri.lab_mask.min_subject_fraction)
        columns = mask_columns(mask)
        check_mask_usable(columns, moments, reference.grid, fmri.mask, indexed=False)
        pick = {sid: columns for sid in moments}
    log.info("fmri stats: mask '%s' keeps %d of %d voxels", fmri.mask, int(mask.sum()), mask.size)

    stats: dict[str, np.ndarray] = {
        "subject_ids": np.array(list(headers), dtype=np.str_),
        "mask": mask,
        "affine": reference.affine,
        "ddof": np.array(ddof),
        "train_trs": train + crop[0],
        "crop": np.array(crop, dtype=np.int64),
        "tr": np.array(fmri.tr),
        "mask_kind": np.array("file" if given else fmri.mask),
    }
    for sid, m in moments.items():
        stats[f"subject_{sid}_mean"] = m.mean[pick[sid]]
        stats[f"subject_{sid}_std"] = m.std[pick[sid]]
    return stats


def build_fmri_tensor(runs: dict[str, nib.Nifti1Image], stats: dict[str, np.ndarray], fmri: FmriSpec) -> np.ndarray:
    """Z-score every subject with its saved stats; average (``cross_subject``, shape
    (n_trs, n_voxels)) or stack (``per_subject``, (n_subjects, n_trs, n_voxels)). float32."""
    headers = _headers(runs, fmri)
    ids = [str(s) for s in stats["subject_ids"]]
    columns = mask_columns(stats["mask"])
    crop = (int(stats["crop"][0]), int(stats["crop"][1]))
    log.info("fmri tensor: %s over %d subjects, %d TRs, %d voxels", fmri.mode, len(ids),
             crop[1] - crop[0], len(columns))
    return combine_subjects(
        [headers[sid] for sid in ids], crop, columns,
        [stats[f"subject_{sid}_mean"] for sid in ids],
        [stats[f"subject_{sid}_std"] for sid in ids],
        fmri.mode, fmri.chunk_trs,
    )


def normalize_heldout(heldout_runs: dict[str, nib.Nifti1Image], stats: dict[str, np.ndarray],
                      fmri: FmriSpec) -> dict[str, np.ndarray]:
    """Z-score each held-out run (all its TRs) with its subject's *saved training* stats.

    Returns ``{"subject_<id>": (n_trs, n_voxels) float32}``.
    """
    mask = stats["mask"]
    columns = mask_columns(mask)
    out: dict[str, np.ndarray] = {}
    for sid in fmri.heldout:
        header = read_header(heldout_runs[sid], f"held-out run of subject {sid!r}")
        check_tr(header, fmri.tr)
        check_space(f"{header.label}: {header.path}", header.grid, header.affine,
                    "the training runs", mask.shape, stats["affine"])
        normalized = np.empty((header.n_trs, len(columns)), dtype=np.float32)
        zscore_run(header, (0, header.n_trs), columns, stats[f"subject_{sid}_mean"],
                   stats[f"subject_{sid}_std"], fmri.chunk_trs, normalized)
        out[f"subject_{sid}"] = normalized
    return out

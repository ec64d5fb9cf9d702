"""Array validators for the catalog ``validator:`` key: raise with a specific message."""

from __future__ import annotations

import numpy as np

REQUIRED_STATS_KEYS = ("subject_ids", "run_ids", "mask", "affine", "ddof", "train_trs")


def _finite(name: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(array)).sum())} NaN/inf values")


def validate_norm_stats(stats: dict[str, np.ndarray]) -> None:
    """``fmri_norm_stats``: every key of the contract; per subject (pooled) and per
    subject and run, finite mean and std of shape (n_mask_voxels,) with std > 0; a
    boolean 3D mask; a finite 4x4 affine."""
    missing = [k for k in REQUIRED_STATS_KEYS if k not in stats]
    if missing:
        raise ValueError(f"norm stats lack keys {missing}")
    mask = np.asarray(stats["mask"])
    if mask.dtype != bool or mask.ndim != 3 or not mask.any():
        raise ValueError(f"mask must be a non-empty 3D boolean array, got {mask.dtype} {mask.shape}")
    affine = np.asarray(stats["affine"])
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    _finite("affine", affine)
    if int(stats["ddof"]) not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {stats['ddof']}")
    train = np.asarray(stats["train_trs"])
    if train.ndim != 1 or train.size < 2 or (np.diff(train) <= 0).any():
        raise ValueError("train_trs must be an increasing list of at least 2 TR indices")
    n_voxels = int(mask.sum())
    ids = [str(s) for s in np.atleast_1d(stats["subject_ids"])]
    if not ids:
        raise ValueError("subject_ids is empty")
    runs = [str(r) for r in np.atleast_1d(stats["run_ids"])]
    prefixes = [f"subject_{sid}" for sid in ids] + [f"subject_{sid}_run_{run}" for sid in ids for run in runs]
    for prefix in prefixes:
        for part in ("mean", "std"):
            key = f"{prefix}_{part}"
            if key not in stats:
                raise ValueError(f"norm stats lack {key}")
            values = np.asarray(stats[key])
            if values.shape != (n_voxels,):
                raise ValueError(f"{key} has shape {values.shape}; the mask has {n_voxels} voxels")
            _finite(key, values)
        if not (np.asarray(stats[f"{prefix}_std"]) > 0).all():
            raise ValueError(f"{prefix}_std has zero entries: those voxels cannot be z-scored")


def validate_fmri_coverage(covered: np.ndarray) -> None:
    """``fmri_train_valid``: (n_subjects, n_trs) bool, with at least one uncensored volume."""
    if covered.dtype != bool or covered.ndim != 2 or 0 in covered.shape:
        raise ValueError(f"fmri_train_valid must be a non-empty (n_subjects, n_trs) bool array, got "
                         f"{covered.dtype} {covered.shape}")
    if not covered.any():
        raise ValueError("fmri_train_valid: every volume of every subject is censored")


def validate_fmri_tensor(tensor: np.ndarray) -> None:
    """``fmri_train``: float32, (n_trs, n_voxels) or (n_subjects, n_trs, n_voxels), finite."""
    if tensor.dtype != np.float32:
        raise ValueError(f"fmri tensor must be float32, got {tensor.dtype}")
    if tensor.ndim not in (2, 3) or 0 in tensor.shape:
        raise ValueError(f"fmri tensor must be (n_trs, n_voxels) or (n_subjects, n_trs, n_voxels) "
                         f"and non-empty, got {tensor.shape}")
    _finite("fmri tensor", tensor)


def validate_heldout(runs: dict[str, np.ndarray]) -> None:
    """``fmri_heldout_normalized``: ``subject_<id>`` -> finite float32 (n_trs, n_voxels)."""
    widths = set()
    for key, array in runs.items():
        if not key.startswith("subject_") or array.ndim != 2 or array.dtype != np.float32:
            raise ValueError(f"{key}: expected 'subject_<id>' -> float32 (n_trs, n_voxels), "
                             f"got {array.dtype} {array.shape}")
        _finite(key, array)
        widths.add(array.shape[1])
    if len(widths) > 1:
        raise ValueError(f"held-out runs disagree on the number of voxels: {sorted(widths)}")


def validate_tr_aligned(aligned) -> None:
    """A TR-aligned stimulus cache: one row and one validity flag per TR of its grid,
    finite values, and a grid whose TR count matches."""
    values, valid, meta = aligned.values, np.asarray(aligned.valid), aligned.meta
    grid = meta.get("grid") or {}
    n_trs = grid.get("n_trs")
    if n_trs is None or values.shape[0] != n_trs or valid.shape != (n_trs,) or valid.dtype != bool:
        raise ValueError(f"{meta.get('modality', 'stimulus')}: values {values.shape} / valid {valid.shape} "
                         f"do not match the grid's {n_trs} TRs")
    if values.dtype.kind == "f" and values.size:
        _finite(f"{meta.get('modality')} features", np.asarray(values))

"""What kedro-viz shows when a dataset is clicked: small JSON summaries (shapes, ranges,
subjects, NIfTI geometry), tables, images. Each is cheap: a large array is summarized
from an evenly strided sample of at most ``SAMPLE`` values, never read whole.
"""

from __future__ import annotations

import json
from typing import Any

import nibabel as nib
import numpy as np

SAMPLE = 1_000_000


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=1, default=str)


def array_summary(array: np.ndarray) -> dict[str, Any]:
    """shape, dtype and, for numbers, min/max/mean (over a strided sample when large)."""
    out: dict[str, Any] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    if array.size == 0 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        if array.dtype.kind == "U" and array.size <= 50:
            out["values"] = array.tolist()
        return out
    flat = array.reshape(-1) if array.flags.c_contiguous else np.ravel(array)
    step = max(1, flat.size // SAMPLE)
    sample = np.asarray(flat[::step], dtype=np.float64)
    finite = sample[np.isfinite(sample)]
    out |= {"min": float(finite.min()) if finite.size else None, "max": float(finite.max()) if finite.size else None,
            "mean": float(finite.mean()) if finite.size else None, "non_finite": int(sample.size - finite.size)}
    if step > 1:
        out["summarized_from"] = f"every {step}th value"
    return out


def arrays_summary(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """An npz's arrays; normalization stats also get their subjects, voxels and TRs."""
    out: dict[str, Any] = {}
    if "subject_ids" in arrays and "mask" in arrays:
        ids = [str(s) for s in np.atleast_1d(arrays["subject_ids"])]
        out["normalization_stats"] = {
            "subjects": ids, "voxels": int(np.asarray(arrays["mask"]).sum()),
            "grid": list(np.asarray(arrays["mask"]).shape), "ddof": int(arrays["ddof"]) if "ddof" in arrays else None,
            "train_trs": int(np.asarray(arrays["train_trs"]).size) if "train_trs" in arrays else None,
            "std_range": {sid: [float(np.min(arrays[f"subject_{sid}_std"])), float(np.max(arrays[f"subject_{sid}_std"]))]
                          for sid in ids if f"subject_{sid}_std" in arrays}}
    out["arrays"] = {key: array_summary(np.asarray(value)) for key, value in arrays.items()}
    return out


def nifti_summary(image: nib.Nifti1Image) -> dict[str, Any]:
    """Geometry from the header only (no voxel data is read)."""
    header = image.header
    zooms = [float(z) for z in header.get_zooms()]
    out = {"file": image.get_filename(), "shape": list(image.shape), "on_disk_dtype": str(header.get_data_dtype()),
           "voxel_size_mm": zooms[:3], "affine": np.round(image.affine, 4).tolist(),
           "orientation": "".join(nib.aff2axcodes(image.affine))}
    if len(image.shape) == 4:
        out |= {"n_trs": int(image.shape[3]), "tr_s": zooms[3] if len(zooms) > 3 else None,
                "time_unit": header.get_xyzt_units()[1]}
    return out

"""Between voxel vectors and images in the original space."""

from __future__ import annotations

import nibabel as nib
import numpy as np


def unmask(values: np.ndarray, mask: np.ndarray, affine: np.ndarray, fill: float = 0.0) -> nib.Nifti1Image:
    """Put masked voxel values back into the original grid.

    Parameters
    ----------
    values : ndarray, shape (n_voxels,) or (n_trs, n_voxels)
        One value per mask voxel, in the C order of ``data[mask]``.
    mask : ndarray of bool, shape (x, y, z)
    affine : ndarray, shape (4, 4)
    fill : value outside the mask.

    Returns
    -------
    Nifti1Image, float32, shape (x, y, z) or (x, y, z, n_trs).
    """
    values = np.asarray(values)
    mask = np.asarray(mask, dtype=bool)
    n_voxels = int(mask.sum())
    if values.shape[-1] != n_voxels or values.ndim not in (1, 2):
        raise ValueError(f"values of shape {values.shape} do not fit a mask of {n_voxels} voxels; "
                         "accepted: (n_voxels,) or (n_trs, n_voxels)")
    if values.ndim == 1:
        volume = np.full(mask.shape, fill, dtype=np.float32)
        volume[mask] = values
    else:
        volume = np.full((*mask.shape, values.shape[0]), fill, dtype=np.float32)
        volume[mask] = values.T
    return nib.Nifti1Image(volume, np.asarray(affine, dtype=np.float64))

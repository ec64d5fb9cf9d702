"""Lesions: brain regions as voxel sets, random control regions, silencing, and the
linear read-out from brain activity to the autoencoder's bottleneck.

Voxel order everywhere is the mask's C order (as in ``fmri_train``).
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from giblet_kedro.errors import InputDataError


def region_voxels(image: nib.Nifti1Image, labels: list[int], mask: np.ndarray, affine: np.ndarray,
                  label: str) -> np.ndarray:
    """(n_voxels,) bool: mask voxels inside the region.

    ``labels`` empty: the image is a mask (nonzero = inside); else an atlas whose listed
    values make up the region. An image on another grid is resampled to the runs' grid
    (nearest neighbour, nilearn). A region with no voxel in the mask is an error.
    """
    if image.ndim != 3 and not (image.ndim == 4 and image.shape[3] == 1):
        raise InputDataError(f"{label}: {image.get_filename()} has shape {image.shape}; accepted: a 3D mask or atlas")
    if image.shape[:3] != mask.shape or not np.allclose(image.affine, affine, atol=1e-3):
        from nilearn.image import resample_img

        image = resample_img(image, target_affine=affine, target_shape=mask.shape, interpolation="nearest",
                             force_resample=True, copy_header=True)
    data = np.asarray(image.dataobj).reshape(mask.shape)
    inside = data != 0 if not labels else np.isin(np.rint(data).astype(np.int64), labels)
    voxels = inside[mask.astype(bool)]
    if not voxels.any():
        found = sorted(np.unique(np.rint(data[mask.astype(bool)]).astype(np.int64)).tolist())[:20]
        raise InputDataError(f"{label}: no voxel of the region lies in the brain mask "
                             f"({'labels ' + str(labels) if labels else 'nonzero voxels'} of "
                             f"{image.get_filename()}); values inside the mask: {found}")
    return voxels


def random_regions(coordinates: np.ndarray, size: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` contiguous regions of ``size`` voxels: the ``size`` mask voxels nearest
    to a random mask voxel (Euclidean, in voxel units).

    coordinates : (n_voxels, 3) voxel indices of the mask voxels.
    """
    centres = rng.choice(len(coordinates), size=count, replace=count > len(coordinates))
    regions = []
    for centre in centres:
        distance = np.square(coordinates - coordinates[centre]).sum(1)
        inside = np.zeros(len(coordinates), dtype=bool)
        inside[np.argsort(distance, kind="stable")[:size]] = True
        regions.append(inside)
    return regions


def silence(fmri: np.ndarray, voxels: np.ndarray, method: str, rng: np.random.Generator) -> np.ndarray:
    """A copy of (n_trs, n_voxels) z-scored activity with the region silenced.

    ``zero``: 0, the voxels' training mean; ``mean``: their mean over these TRs;
    ``noise``: independent N(0, 1) values (the z-scored power, no information).
    """
    out = np.array(fmri, dtype=np.float32, copy=True)
    if method == "zero":
        out[:, voxels] = 0.0
    elif method == "mean":
        out[:, voxels] = out[:, voxels].mean(0, keepdims=True)
    elif method == "noise":
        out[:, voxels] = rng.standard_normal((out.shape[0], int(voxels.sum()))).astype(np.float32)
    else:
        raise ValueError(f"unknown lesion method {method!r}; accepted: 'zero', 'mean', 'noise'")
    return out


@dataclass(frozen=True)
class BrainReadout:
    """Linear map from brain activity (n, V) in model units to the bottleneck (n, width).

    With ``bottleneck: voxels`` the bottleneck *is* the brain and the map is the
    identity; otherwise a ridge regression fit on the training TRs from the measured fMRI
    to the encoded stimulus (alpha by generalized cross-validation, scikit-learn).
    """

    coef: np.ndarray | None  # (V, width); None for the identity
    intercept: np.ndarray | None
    alpha: float | None

    @classmethod
    def identity(cls) -> BrainReadout:
        return cls(coef=None, intercept=None, alpha=None)

    @classmethod
    def fit(cls, fmri: np.ndarray, bottleneck: np.ndarray, alphas: np.ndarray) -> BrainReadout:
        from sklearn.linear_model import RidgeCV

        model = RidgeCV(alphas=alphas).fit(np.asarray(fmri, dtype=np.float64), np.asarray(bottleneck, dtype=np.float64))
        return cls(coef=model.coef_.T.astype(np.float32), intercept=model.intercept_.astype(np.float32),
                   alpha=float(model.alpha_))

    def __call__(self, fmri: np.ndarray) -> np.ndarray:
        if self.coef is None:
            return np.asarray(fmri, dtype=np.float32)
        return (np.asarray(fmri, dtype=np.float32) @ self.coef + self.intercept).astype(np.float32)

"""Lesions of the voxel layer: regions as voxel sets, random control regions, silencing,
and the statistics of each lesion's effect.

With ``bottleneck: voxels`` the decoders read nothing but the voxel layer, each through
a linear projection ``z_m = W_m x + b_m`` (voxels -> rank). A lesion replaces the
region's units ``x_R`` by a fill ``f_R``, so each decoder's input moves by exactly
``W_m[:, R] (f_R - x_R)``: computed from the region's columns only, which makes a
thousand random regions affordable at 83,138 voxels. With a latent bottleneck the voxel
layer is measured brain activity, read into the latent by a ridge regression
(:class:`BrainReadout`); the same algebra applies to its coefficients.

Voxel order everywhere is the mask's C order (as in ``fmri_train``). Effects are in the
units of the training loss's ``variance`` mode (1 = predicting every feature's training
mean), so they mean the same in every modality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from giblet_kedro.errors import InputDataError
from giblet_kedro.evaluation import metrics


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


def random_regions(coordinates: np.ndarray, size: int, count: int, rng: np.random.Generator,
                   exclude: np.ndarray | None = None) -> list[np.ndarray]:
    """``count`` contiguous regions of ``size`` voxels, each the ``size`` mask voxels
    outside ``exclude`` nearest to a random centre outside ``exclude`` (Euclidean, voxel
    units).

    coordinates : (n_voxels, 3) voxel indices of the mask voxels.
    exclude : (n_voxels,) bool, voxels no control region may contain (the target).

    Returns a list of (size,) int arrays of voxel indices.
    """
    allowed = np.flatnonzero(~exclude) if exclude is not None else np.arange(len(coordinates))
    if allowed.size < size:
        raise InputDataError(f"a region of {size} voxels leaves only {allowed.size} other voxels in the mask: "
                             "no random control region of its size fits")
    points = coordinates[allowed].astype(np.float64)
    centres = rng.choice(allowed.size, size=count, replace=count > allowed.size)
    regions = []
    for centre in centres:
        distance = np.square(points - points[centre]).sum(1)
        nearest = np.argpartition(distance, size - 1)[:size] if size < allowed.size else np.arange(allowed.size)
        regions.append(np.sort(allowed[nearest]))
    return regions


def fill_values(method: str, layer: np.ndarray, training_mean: np.ndarray, voxels: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """(n, |R|) what a silenced region holds: ``zero`` 0 (the measured fMRI's training
    mean, in standardized units); ``mean`` the layer's own mean over the training TRs;
    ``noise`` independent N(0, 1) values (the power kept, the information not)."""
    n = layer.shape[0]
    if method == "zero":
        return np.zeros((n, voxels.size), dtype=np.float32)
    if method == "mean":
        return np.broadcast_to(training_mean[voxels].astype(np.float32), (n, voxels.size))
    if method == "noise":
        return rng.standard_normal((n, voxels.size)).astype(np.float32)
    raise ValueError(f"unknown lesion method {method!r}; accepted: 'zero', 'mean', 'noise'")


@dataclass(frozen=True)
class BrainReadout:
    """Linear map from brain activity (n, V) in model units to a latent bottleneck
    (n, width): a ridge regression fit on the training TRs from the measured fMRI to the
    encoded stimulus (alpha by generalized cross-validation, scikit-learn). Only the
    latent layout needs it: the voxels layout's decoders read the voxel layer itself."""

    coef: np.ndarray  # (V, width)
    intercept: np.ndarray
    alpha: float

    @classmethod
    def fit(cls, fmri: np.ndarray, bottleneck: np.ndarray, alphas: np.ndarray) -> BrainReadout:
        from sklearn.linear_model import RidgeCV

        model = RidgeCV(alphas=alphas).fit(np.asarray(fmri, dtype=np.float64), np.asarray(bottleneck, dtype=np.float64))
        return cls(coef=model.coef_.T.astype(np.float32), intercept=model.intercept_.astype(np.float32),
                   alpha=float(model.alpha_))

    def __call__(self, fmri: np.ndarray) -> np.ndarray:
        return (np.asarray(fmri, dtype=np.float32) @ self.coef + self.intercept).astype(np.float32)


@dataclass(frozen=True)
class LayerProjection:
    """The linear step from the voxel layer to each decoder's input: ``z_m = x A_m + b_m``.

    weights : modality -> (V, width) ``A_m``; biases : modality -> (width,).
    """

    weights: dict[str, np.ndarray]
    biases: dict[str, np.ndarray]

    def __call__(self, layer: np.ndarray) -> dict[str, np.ndarray]:
        return {m: (layer @ a + self.biases[m]).astype(np.float32) for m, a in self.weights.items()}

    def lesioned(self, intact: dict[str, np.ndarray], layer: np.ndarray, voxels: np.ndarray,
                 fill: np.ndarray) -> dict[str, np.ndarray]:
        """Each decoder's input with ``layer[:, voxels]`` replaced by ``fill`` (n, |R|),
        from the intact inputs and the region's columns only."""
        change = fill - layer[:, voxels]
        return {m: intact[m] + change @ a[voxels] for m, a in self.weights.items()}


def lesion_statistics(observed: dict[str, np.ndarray], randoms: list[dict[str, float]], block: int, n_boot: int,
                      rng: np.random.Generator) -> dict[str, dict]:
    """A region's effect on each modality against random regions of its size.

    observed : modality -> (n_trs,) per-TR loss increase (NaN where the TR is padding).
    randoms : per random region, modality -> mean loss increase.

    Per modality: the effect (mean over valid TRs), its 95% circular-block bootstrap
    interval over TRs (blocks of ``block`` TRs), and the permutation p
    ``(1 + #random >= effect) / (1 + N)``.
    """
    out = {}
    for name, per_tr in observed.items():
        valid = per_tr[np.isfinite(per_tr)]
        effect = float(valid.mean())
        boot = metrics.block_bootstrap_means(valid, block, n_boot, rng)
        random_effects = np.array([r[name] for r in randoms])
        out[name] = {"effect": effect, "ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
                     "p": float((1 + (random_effects >= effect).sum()) / (1 + random_effects.size)),
                     "random_mean": float(random_effects.mean()), "random_max": float(random_effects.max()),
                     "random_q05_q50_q95": [float(v) for v in np.percentile(random_effects, [5, 50, 95])],
                     "random_share_at_least": float((random_effects >= effect).mean())}
    return out


def add_fdr(regions: dict[str, dict], q: float) -> None:
    """Benjamini-Hochberg across every region and modality: ``q_significant`` in place."""
    keys = [(region, name) for region, entry in regions.items() for name in entry["effects"]]
    p = np.array([regions[region]["effects"][name]["p"] for region, name in keys])
    significant = metrics.fdr_significant(p, q) if p.size else np.zeros(0, bool)
    for (region, name), flag in zip(keys, significant, strict=True):
        regions[region]["effects"][name]["fdr_significant"] = bool(flag)


def bootstrap_block(tr: float, seconds: float = 15.0) -> int:
    """TRs per bootstrap block: the span of one haemodynamic response (10 at 1.5 s)."""
    return max(1, int(math.ceil(seconds / tr))) if tr > 0 else 10

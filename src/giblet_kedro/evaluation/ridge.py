"""The field's reference encoding model: voxelwise banded ridge regression with FIR delays.

Each modality is one feature band (himalaya's ``MultipleKernelRidgeCV``: one linear
kernel per band, band weights and per-voxel alphas chosen by cross-validation on the
training TRs). The features are the ones the autoencoder sees, on the same TR grid:

- video: the HRF-convolved frames, flattened (n_trs, F * 3 * H * W);
- audio codes: per TR, the histogram of each codebook's codes (bag of codes,
  n_q * 1024 counts; the codes are already delayed to the HRF peak); mel: flattened;
- text: the HRF-convolved CLIP embedding.

Each feature is standardized on the training TRs; invalid TRs (padding) are 0. FIR
delays lag every band by each delay of a set (within runs: nothing crosses a run
boundary); the set is chosen on the val TRs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from giblet_kedro.errors import InputDataError
from giblet_kedro.evaluation.metrics import pearson_columns

CODEBOOK_SIZE = 1024


def code_histograms(codes: np.ndarray) -> np.ndarray:
    """(n_trs, n_q, T) integer codes -> (n_trs, n_q * 1024) counts per codebook."""
    n, n_q, _ = codes.shape
    flat = codes.astype(np.int64) + np.arange(n_q)[None, :, None] * CODEBOOK_SIZE
    counts = np.zeros((n, n_q * CODEBOOK_SIZE), dtype=np.float32)
    np.add.at(counts, (np.repeat(np.arange(n), flat[0].size), flat.reshape(n, -1).ravel()), 1.0)
    return counts


def feature_band(values: np.ndarray, valid: np.ndarray, train_rows: np.ndarray, is_codes: bool) -> np.ndarray:
    """One modality as a standardized (n_trs, d) float32 band; invalid TRs are 0 and
    features constant over the training TRs are dropped."""
    x = code_histograms(np.asarray(values)) if is_codes else np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    x = np.where(np.asarray(valid)[:, None], x, 0.0).astype(np.float32)
    mean = x[train_rows].mean(0)
    std = x[train_rows].std(0)
    keep = std > 0
    return ((x[:, keep] - mean[keep]) / std[keep]).astype(np.float32)


def fir_delays(x: np.ndarray, delays: list[int], run_starts: np.ndarray) -> np.ndarray:
    """(n_trs, d) -> (n_trs, d * len(delays)): ``x`` lagged by each delay (TRs), with
    zeros where the lag would reach into the previous run.

    run_starts : (n_runs,) first row of each run (sorted, starting at 0).
    """
    bounds = [*run_starts.tolist(), len(x)]
    lagged = []
    for delay in delays:
        out = np.zeros_like(x)
        for start, stop in zip(bounds[:-1], bounds[1:], strict=False):
            if delay < stop - start:
                out[start + delay:stop] = x[start:stop - delay]
        lagged.append(out)
    return np.concatenate(lagged, axis=1)


@dataclass(frozen=True)
class RidgeFit:
    """The chosen reference model and its predictions.

    prediction : (n_trs, n_voxels) float32, for every row of the grid.
    delays : the FIR delays chosen on val TRs; val_scores: mean val r of each set.
    band_weights : per band, the median over voxels of its kernel weight.
    """

    prediction: np.ndarray
    delays: list[int]
    val_scores: dict[str, float]
    band_weights: dict[str, float]


def ridge_backend(choice: str) -> str:
    """himalaya's backend for ``evaluate.ridge.backend``: ``auto`` is ``torch_cuda`` when a
    CUDA device is visible, else ``numpy``."""
    import torch

    cuda = torch.cuda.is_available()
    if choice == "auto":
        return "torch_cuda" if cuda else "numpy"
    if choice == "torch_cuda" and not cuda:
        raise InputDataError("evaluate.ridge.backend is 'torch_cuda' but no CUDA device is visible; use 'auto' or "
                             "'numpy'")
    return choice


def fit_banded_ridge(bands: dict[str, np.ndarray], fmri: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                     run_starts: np.ndarray, delay_sets: list[list[int]], alphas: list[float], n_iter: int,
                     seed: int, backend: str = "numpy") -> RidgeFit:
    """Fit on ``train_rows`` for each delay set, keep the set with the best mean r on
    ``val_rows``.

    Parameters
    ----------
    bands : modality -> (n_trs, d) standardized features.
    fmri : (n_trs, n_voxels) measured (z-scored) fMRI.
    backend : himalaya's backend (``numpy`` or ``torch_cuda``, see :func:`ridge_backend`).
    """
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import ColumnKernelizer, Kernelizer, MultipleKernelRidgeCV
    from sklearn.pipeline import make_pipeline

    engine = set_backend(backend, on_error="raise")
    y = np.asarray(fmri, dtype=np.float32)
    best: tuple[float, list[int], np.ndarray, dict] | None = None
    scores = {}
    for delays in delay_sets:
        lagged = {name: fir_delays(x, delays, run_starts) for name, x in bands.items()}
        design = np.concatenate(list(lagged.values()), axis=1)
        edges = np.cumsum([0, *(x.shape[1] for x in lagged.values())])
        kernelizer = ColumnKernelizer([(name, Kernelizer(kernel="linear"), slice(int(a), int(b)))
                                       for name, a, b in zip(lagged, edges[:-1], edges[1:], strict=True)])
        solver = {"n_iter": n_iter, "alphas": np.asarray(alphas, dtype=np.float64), "progress_bar": False}
        model = make_pipeline(kernelizer, MultipleKernelRidgeCV(kernels="precomputed", solver="random_search",
                                                                solver_params=solver, random_state=seed))
        model.fit(design[train_rows], y[train_rows])
        prediction = np.asarray(engine.to_numpy(model.predict(design)), dtype=np.float32)
        score = float(np.mean(pearson_columns(prediction[val_rows], y[val_rows])))
        scores[str(delays)] = round(score, 4)
        if best is None or score > best[0]:
            weights = np.asarray(engine.to_numpy(model[-1].deltas_))  # (n_bands, n_voxels) log kernel weights
            band_weights = {name: float(np.median(np.exp(weights[k]))) for k, name in enumerate(lagged)}
            best = (score, delays, prediction, band_weights)
    assert best is not None
    return RidgeFit(prediction=best[2], delays=best[1], val_scores=scores, band_weights=best[3])

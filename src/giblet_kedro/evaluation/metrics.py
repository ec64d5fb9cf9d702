"""Evaluation metrics: voxelwise correlation, its null, the noise ceiling, and
reconstruction quality per modality. Pure numpy; arrays are (time, ...) first.
"""

from __future__ import annotations

import numpy as np


def pearson_columns(prediction: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Pearson r over time, column by column.

    Parameters
    ----------
    prediction, measured : (n_trs, n_voxels)

    Returns
    -------
    (n_voxels,) float64; 0 where either column is constant.
    """
    p = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)
    p = p - p.mean(0)
    y = y - y.mean(0)
    denominator = np.sqrt((p * p).sum(0) * (y * y).sum(0))
    return np.divide((p * y).sum(0), denominator, out=np.zeros(p.shape[1]), where=denominator > 0)


def null_shifts(n_trs: int, n_shifts: int, min_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Circular shifts for the null: every shift in ``[min_shift, n_trs - min_shift]`` when
    there are at most ``n_shifts`` of them, else ``n_shifts`` drawn without replacement."""
    candidates = np.arange(min_shift, n_trs - min_shift + 1)
    candidates = candidates[(candidates > 0) & (candidates < n_trs)]
    if candidates.size == 0:
        raise ValueError(f"{n_trs} TRs leave no circular shift of at least {min_shift} TRs; "
                         "lower evaluate.min_shift_trs or evaluate on more TRs")
    if candidates.size <= n_shifts:
        return candidates
    return np.sort(rng.choice(candidates, size=n_shifts, replace=False))


def circular_shift_null(prediction: np.ndarray, measured: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """(n_shifts, n_voxels) r of the prediction circularly shifted in time by each shift:
    the shifted series keeps its autocorrelation but loses its alignment."""
    return np.stack([pearson_columns(np.roll(prediction, int(k), axis=0), measured) for k in shifts])


def pooled_p_values(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """One-sided p per voxel against the null pooled over every voxel and shift.

    With a few dozen TRs a voxel alone has too few distinct shifts for a usable p; the
    pooled null (n_shifts x n_voxels values) has the same autocorrelation structure.
    ``p = (1 + #null >= r) / (1 + #null)``.
    """
    pooled = np.sort(null.ravel())
    greater_equal = pooled.size - np.searchsorted(pooled, observed, side="left")
    return (1.0 + greater_equal) / (1.0 + pooled.size)


def block_bootstrap_difference(prediction_a: np.ndarray, prediction_b: np.ndarray, measured: np.ndarray,
                               voxels: np.ndarray, block: int, n_boot: int,
                               rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) resampled differences of mean r (a minus b) over ``voxels``.

    Test TRs are resampled in contiguous blocks of ``block`` TRs with replacement (a
    moving-block bootstrap keeps the autocorrelation within blocks); both predictions
    see the same resampled TRs.

    prediction_a, prediction_b : (n_trs, n_voxels); measured : (n_subjects, n_trs, n_voxels).
    """
    n = prediction_a.shape[0]
    block = max(1, min(block, n))
    starts = np.arange(n - block + 1)
    n_blocks = int(np.ceil(n / block))
    differences = np.empty(n_boot)
    for k in range(n_boot):
        rows = (rng.choice(starts, size=n_blocks)[:, None] + np.arange(block)[None]).ravel()[:n]
        a = np.mean([pearson_columns(prediction_a[rows][:, voxels], m[rows][:, voxels]) for m in measured], axis=0)
        b = np.mean([pearson_columns(prediction_b[rows][:, voxels], m[rows][:, voxels]) for m in measured], axis=0)
        differences[k] = a.mean() - b.mean()
    return differences


def fdr_significant(p_values: np.ndarray, q: float) -> np.ndarray:
    """Benjamini-Hochberg: a boolean mask of the p-values significant at FDR ``q``."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    ranked = p[order]
    below = ranked <= q * np.arange(1, p.size + 1) / p.size
    significant = np.zeros(p.size, dtype=bool)
    if below.any():
        significant[order[: np.flatnonzero(below).max() + 1]] = True
    return significant


def mean_pairwise_correlation(subjects: np.ndarray) -> np.ndarray:
    """(n_voxels,) mean over subject pairs of their Pearson r over time.

    subjects : (n_subjects, n_trs, n_voxels), each z-scored with its own statistics.
    """
    n = subjects.shape[0]
    if n < 2:
        raise ValueError("a noise ceiling from the subjects needs at least 2 subjects")
    pairs = [pearson_columns(subjects[i], subjects[j]) for i in range(n) for j in range(i + 1, n)]
    return np.mean(pairs, axis=0)


def noise_ceiling(subjects: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """The highest r a perfect model of the shared response could reach, per voxel.

    Each subject is ``shared + own noise``. The mean inter-subject correlation ``rho``
    estimates the shared share of a subject's variance. A perfect model correlates with
    one subject at ``sqrt(rho)`` (``target="subject"``: ``per_subject`` mode) and with the
    average of ``n`` subjects at ``sqrt(n rho / (1 + (n - 1) rho))`` (Spearman-Brown;
    ``target="average"``: ``cross_subject``). ``rho <= 0`` gives a ceiling of 0.

    Returns (ceiling, rho), each (n_voxels,).
    """
    rho = mean_pairwise_correlation(subjects)
    clipped = np.clip(rho, 0.0, 1.0)
    if target == "subject":
        reliability = clipped
    elif target == "average":
        n = subjects.shape[0]
        reliability = n * clipped / (1.0 + (n - 1) * clipped)
    else:
        raise ValueError(f"unknown noise-ceiling target {target!r}; accepted: 'subject', 'average'")
    return np.sqrt(reliability), rho


def leave_one_subject_out(subjects: np.ndarray) -> np.ndarray:
    """(n_voxels,) mean over subjects of r between a subject and the mean of the others."""
    n = subjects.shape[0]
    return np.mean([pearson_columns(subjects[i], subjects[np.arange(n) != i].mean(0)) for i in range(n)], axis=0)


# ------------------------------------------------------------------ reconstruction
def frame_correlation(reconstructed: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(n,) Pearson r between each reconstructed sample and the true one, over all its
    values (pixels of a TR's frames, dimensions of an embedding)."""
    a = reconstructed.reshape(len(reconstructed), -1).astype(np.float64)
    b = true.reshape(len(true), -1).astype(np.float64)
    return pearson_columns(a.T, b.T)


def psnr(reconstructed: np.ndarray, true: np.ndarray, data_range: float) -> np.ndarray:
    """(n,) peak signal-to-noise ratio (dB) of each sample, for values in ``[0, data_range]``."""
    error = ((reconstructed.astype(np.float64) - true.astype(np.float64)) ** 2).reshape(len(true), -1).mean(1)
    return 10.0 * np.log10(data_range**2 / np.maximum(error, 1e-12))


def code_accuracy(logits: np.ndarray, codes: np.ndarray) -> float:
    """Share of EnCodec codes predicted exactly: logits (n, n_q, 1024, T), codes (n, n_q, T)."""
    return float((logits.argmax(axis=2) == codes).mean())


def majority_code_accuracy(train_codes: np.ndarray, codes: np.ndarray) -> float:
    """Accuracy of always predicting each codebook's most frequent training code: the
    chance level code accuracy is compared with. Codes (n, n_q, T)."""
    hits = []
    for q in range(codes.shape[1]):
        majority = np.bincount(train_codes[:, q].ravel().astype(np.int64)).argmax()
        hits.append((codes[:, q] == majority).mean())
    return float(np.mean(hits))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) cosine similarity of matching rows of (n, d) arrays."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(1), norms, out=np.zeros(len(a)), where=norms > 0)


def retrieval_top_k(reconstructed: np.ndarray, candidates: np.ndarray, true_index: np.ndarray, k: int) -> float:
    """Share of samples whose true candidate is among the ``k`` candidates most cosine-
    similar to the reconstruction.

    reconstructed : (n, d); candidates : (m, d) (e.g. the distinct annotation segments);
    true_index : (n,) the row of ``candidates`` each sample's truth is.
    """
    a = reconstructed / np.maximum(np.linalg.norm(reconstructed, axis=1, keepdims=True), 1e-12)
    c = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    similarity = a @ c.T  # (n, m)
    own = similarity[np.arange(len(a)), true_index]
    rank = (similarity > own[:, None]).sum(1)  # candidates strictly better than the truth
    return float((rank < k).mean())

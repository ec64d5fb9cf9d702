"""Evaluation metrics: voxelwise correlation, FDR, the noise ceiling, bootstrap
intervals, and reconstruction quality per modality (nulls: :mod:`.nulls`). Pure numpy;
arrays are (time, ...) first.
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


def leave_one_out_isc(data: np.ndarray) -> np.ndarray:
    """Each subject's r with the mean of the others, voxel by voxel: how well a shared
    response predicts that subject, the ceiling of a prediction of that subject.

    Parameters
    ----------
    data : (n_subjects, n_trs, n_voxels), n_subjects >= 2

    Returns
    -------
    (n_subjects, n_voxels) float64
    """
    data = np.asarray(data, dtype=np.float64)
    if len(data) < 2:
        raise ValueError("a leave-one-out ceiling needs at least 2 subjects")
    total = data.sum(0)
    return np.stack([pearson_columns((total - subject) / (len(data) - 1), subject) for subject in data])


def mean_r(prediction: np.ndarray, measured: np.ndarray, voxels: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Mean r over ``voxels`` of a prediction (n, V) with each subject's measurement
    (S, n, V), averaged over subjects; on ``rows`` (positions 0..n-1, or a boolean mask)
    only, if given."""
    if rows is not None:
        prediction, measured = prediction[rows], measured[:, rows]
    return float(np.mean([pearson_columns(prediction[:, voxels], m[:, voxels]).mean() for m in measured]))


def seed_spread(seed_fmri: np.ndarray, measured: np.ndarray, voxels: np.ndarray, seeds: list[int]) -> dict:
    """How much the seeds' models differ, and what averaging them gains: each model's
    mean r over ``voxels`` (averaged over subjects), their mean, sample SD, min and max,
    and the ensemble mean's r.

    seed_fmri : (n_seeds, n, V) each model's prediction. measured : (S, n, V).
    voxels : (V,) bool, the voxels scored (the reliable ones).
    """
    each = [mean_r(prediction, measured, voxels) for prediction in seed_fmri]
    ensemble = mean_r(seed_fmri.mean(axis=0), measured, voxels)
    return {"seeds": [int(s) for s in seeds], "voxels": int(voxels.sum()), "each_mean_r": each,
            "mean": float(np.mean(each)), "sd": float(np.std(each, ddof=1)) if len(each) > 1 else 0.0,
            "min": float(np.min(each)), "max": float(np.max(each)), "ensemble_mean_r": ensemble,
            "ensemble_gain": ensemble - float(np.mean(each))}


def bootstrap_rows(n: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) row indices of one circular block bootstrap resample (Politis & Romano): blocks
    of ``block`` consecutive rows, started anywhere and wrapping around the end, until
    ``n`` rows. Blocks keep the autocorrelation within them; wrapping gives every row the
    same weight (a moving-block bootstrap under-samples the ends and biases the mean)."""
    block = max(1, min(block, n))
    starts = rng.integers(0, n, size=int(np.ceil(n / block)))
    return ((starts[:, None] + np.arange(block)[None]) % n).ravel()[:n]


def block_bootstrap_means(values: np.ndarray, block: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) means of circular-block bootstrap resamples of the (n,) series ``values``."""
    values = np.asarray(values, dtype=np.float64)
    return np.array([values[bootstrap_rows(len(values), block, rng)].mean() for _ in range(n_boot)])


def block_trs(seconds: float, tr: float) -> int:
    """TRs in a block of at least ``seconds`` (s) at this TR (s)."""
    if tr <= 0:
        raise ValueError(f"a block of {seconds} s needs the TR in seconds, got {tr}")
    return max(1, int(np.ceil(seconds / tr - 1e-9)))


def contiguous_blocks(rows: np.ndarray, block: int) -> list[np.ndarray]:
    """Positions into ``rows`` (sorted TR rows) of the blocks a delete-a-block jackknife
    leaves out: each stretch of consecutive rows (a run's test block) is cut into as many
    blocks of at least ``block`` rows as it holds (one, if it is shorter), of near-equal
    lengths, so no block spans two stretches. Fewer than 2 blocks in all: the rows are cut
    in 2."""
    rows = np.asarray(rows)
    positions = np.arange(len(rows))
    blocks = []
    for stretch in np.split(positions, np.flatnonzero(np.diff(rows) != 1) + 1):
        if stretch.size:
            blocks += np.array_split(stretch, max(1, stretch.size // block))
    return blocks if len(blocks) >= 2 else np.array_split(positions, 2)


def jackknife_se(statistic, n: int, blocks: list[np.ndarray]) -> float:
    """The delete-a-block jackknife standard error of ``statistic`` (positions 0..n-1 ->
    float): ``sqrt((K - 1) / K * sum_k (s_k - mean s)^2)`` over the K values with block k
    left out (:func:`contiguous_blocks`). Blocks longer than the autocorrelation leave each
    replicate's errors nearly independent of the left-out block's."""
    left_out = np.array([statistic(np.setdiff1d(np.arange(n), block)) for block in blocks])
    k = len(blocks)
    return float(np.sqrt((k - 1) / k * ((left_out - left_out.mean()) ** 2).sum()))


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


def noise_ceiling(rho: np.ndarray, n_subjects: int, target: str) -> np.ndarray:
    """The highest r a perfect model of the shared response could reach, per voxel.

    Each subject is ``shared + own noise``. The mean inter-subject correlation ``rho``
    estimates the shared share of a subject's variance. A perfect model correlates with
    one subject at ``sqrt(rho)`` (``target="subject"``: ``per_subject`` mode) and with the
    average of ``n`` subjects at ``sqrt(n rho / (1 + (n - 1) rho))`` (Spearman-Brown;
    ``target="average"``: ``cross_subject``). ``rho <= 0`` gives a ceiling of 0.
    """
    clipped = np.clip(rho, 0.0, 1.0)
    if target == "subject":
        reliability = clipped
    elif target == "average":
        reliability = n_subjects * clipped / (1.0 + (n_subjects - 1) * clipped)
    else:
        raise ValueError(f"unknown noise-ceiling target {target!r}; accepted: 'subject', 'average'")
    return np.sqrt(reliability)


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

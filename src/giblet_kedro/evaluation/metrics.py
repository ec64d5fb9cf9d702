"""Evaluation metrics: voxelwise correlation, its null, the noise ceiling, and
reconstruction quality per modality. Pure numpy; arrays are (time, ...) first.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# ------------------------------------------------------------- inter-subject agreement
@dataclass
class InterSubject:
    """Inter-subject agreement on one set of rows, accumulated one subject at a time, so
    no more than two (n_rows, n_voxels) arrays are ever held, whatever the subject count.

    Each subject is standardized over the rows (z, ddof 0), so the correlation of two
    subjects is ``mean_t(z_i z_j)`` and the sum over pairs follows from the running sum
    of z (``total``) and of its squares (``squares``): ``sum_{i<j} r_ij =
    (sum_t total^2 - squares) / (2 n_rows)``. The first subject is kept for the null.

    total, first : (n_rows, n_voxels); squares : (n_voxels,).
    """

    total: np.ndarray
    squares: np.ndarray
    first: np.ndarray
    n_subjects: int

    @staticmethod
    def standardize(data: np.ndarray) -> np.ndarray:
        """(n_rows, n_voxels) -> z over the rows (ddof 0); constant columns become 0."""
        data = np.asarray(data, dtype=np.float64)
        if data.shape[0] == 0:
            return data
        centred = data - data.mean(0)
        std = centred.std(0)
        return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)

    @classmethod
    def empty(cls, n_rows: int, n_voxels: int) -> InterSubject:
        return cls(total=np.zeros((n_rows, n_voxels)), squares=np.zeros(n_voxels),
                   first=np.zeros((n_rows, n_voxels)), n_subjects=0)

    def add(self, data: np.ndarray) -> None:
        """Accumulate one subject's (n_rows, n_voxels) data."""
        z = self.standardize(data)
        if self.n_subjects == 0:
            self.first = z
        self.total += z
        self.squares += (z * z).sum(0)
        self.n_subjects += 1

    @classmethod
    def accumulate(cls, subjects) -> InterSubject:
        """From a sequence of (n_rows, n_voxels) arrays, one per subject."""
        subjects = list(subjects)
        state = cls.empty(*np.shape(subjects[0]))
        for data in subjects:
            state.add(data)
        return state

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_total": self.total.astype(np.float32), f"{prefix}_squares": self.squares,
                f"{prefix}_first": self.first.astype(np.float32), f"{prefix}_n_subjects": np.array(self.n_subjects)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> InterSubject:
        return cls(total=np.asarray(arrays[f"{prefix}_total"], dtype=np.float64),
                   squares=np.asarray(arrays[f"{prefix}_squares"], dtype=np.float64),
                   first=np.asarray(arrays[f"{prefix}_first"], dtype=np.float64),
                   n_subjects=int(arrays[f"{prefix}_n_subjects"]))

    @property
    def n_rows(self) -> int:
        return self.total.shape[0]

    def mean_pairwise(self) -> np.ndarray:
        """(n_voxels,) mean over subject pairs of their Pearson r over the rows."""
        n = self.n_subjects
        if n < 2:
            raise ValueError("inter-subject agreement needs at least 2 subjects")
        pair_sum = ((self.total**2).sum(0) - self.squares) / (2 * self.n_rows)
        return pair_sum / (n * (n - 1) / 2)

    def mean_pairwise_first_shifted(self, shift: int) -> np.ndarray:
        """(n_voxels,) the same with the first subject circularly shifted in time: its
        agreement with the others becomes chance, with the same autocorrelation."""
        n = self.n_subjects
        others = self.total - self.first
        others_squares = self.squares - (self.first**2).sum(0)
        among_others = ((others**2).sum(0) - others_squares) / (2 * self.n_rows)
        with_first = (np.roll(self.first, shift, axis=0) * others).sum(0) / self.n_rows
        return (among_others + with_first) / (n * (n - 1) / 2)


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

"""Evaluation metrics against independent computations (scipy, numpy by hand, planted truth)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter
from scipy.stats import pearsonr

from giblet_kedro.evaluation import metrics, nulls


def mean_pairwise_correlation(subjects: np.ndarray) -> np.ndarray:
    """The definition: the mean over subject pairs of their r, pair by pair (scipy)."""
    n, _, n_voxels = subjects.shape
    return np.mean([[pearsonr(subjects[i, :, v], subjects[j, :, v]).statistic if subjects[i, :, v].std() > 0
                     and subjects[j, :, v].std() > 0 else 0.0 for v in range(n_voxels)]
                    for i in range(n) for j in range(i + 1, n)], axis=0)


def ar1(rng: np.random.Generator, shape: tuple[int, ...], phi: float = 0.6) -> np.ndarray:
    """(n_trs, ...) unit-variance AR(1) noise along axis 0."""
    innovations = rng.standard_normal(shape) * np.sqrt(1 - phi**2)
    return lfilter([1.0], [1.0, -phi], innovations, axis=0)


def test_pearson_columns_matches_scipy_and_handles_constants(rng):
    a, b = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
    b[:, 1] += 2 * a[:, 1]
    expected = [pearsonr(a[:, k], b[:, k]).statistic for k in range(5)]
    np.testing.assert_allclose(metrics.pearson_columns(a, b), expected, atol=1e-12)
    a[:, 3] = 7.0
    assert metrics.pearson_columns(a, b)[3] == 0.0


def test_noise_ceiling_matches_a_planted_shared_response(rng):
    """Subjects = shared (variance s2) + own noise (variance 1): the ceiling formulas are
    the correlation of the *true* shared response with one subject / the subjects' mean."""
    n_subjects, n_trs, n_voxels = 6, 4000, 8
    s2 = np.linspace(0.2, 3.0, n_voxels)
    shared = rng.standard_normal((n_trs, n_voxels)) * np.sqrt(s2)
    subjects = shared[None] + rng.standard_normal((n_subjects, n_trs, n_voxels))
    rho = mean_pairwise_correlation(subjects)
    np.testing.assert_allclose(rho, s2 / (s2 + 1.0), atol=0.03)
    ceiling_avg = metrics.noise_ceiling(rho, n_subjects, "average")
    np.testing.assert_allclose(ceiling_avg, np.sqrt(s2 / (s2 + 1.0 / n_subjects)), atol=0.02)
    np.testing.assert_allclose(ceiling_avg, metrics.pearson_columns(shared, subjects.mean(0)), atol=0.02)
    np.testing.assert_allclose(metrics.noise_ceiling(rho, n_subjects, "subject"), np.sqrt(s2 / (s2 + 1.0)), atol=0.03)
    assert metrics.noise_ceiling(np.array([-0.2]), 4, "average")[0] == 0.0


def test_mean_pairwise_isc_equals_the_pairwise_definition(rng):
    """The sums formula gives exactly the mean of all pairwise r, constant voxels too."""
    subjects = rng.standard_normal((5, 30, 7)) + rng.standard_normal((30, 7))
    subjects[:, :, 3] = 2.0  # a constant voxel
    np.testing.assert_allclose(nulls.mean_pairwise_isc(subjects), mean_pairwise_correlation(subjects), atol=1e-12)


def test_shift_null_per_voxel_finds_a_real_effect(rng):
    n_trs, n_voxels = 60, 200
    signal = ar1(rng, (n_trs, n_voxels))
    measured = signal + ar1(rng, (n_trs, n_voxels))
    measured[:, 100:] = ar1(rng, (n_trs, 100))  # half the voxels carry nothing
    for test in (nulls.shift_null(signal, measured[None], 5, 200, rng),
                 nulls.phase_null(signal, measured[None], 500, rng)):
        significant = metrics.fdr_significant(test.p, 0.05)
        assert significant[:100].mean() > 0.9 and significant[100:].mean() < 0.1, test.kind


def test_null_shifts_bounds_and_too_short_series(rng):
    shifts = nulls.null_shifts(20, 200, 5, rng)
    assert shifts.tolist() == list(range(5, 16))
    assert len(nulls.null_shifts(1000, 50, 5, rng)) == 50
    with pytest.raises(ValueError, match="min_shift_trs"):
        nulls.null_shifts(8, 10, 5, rng)


def test_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.5, 0.02])
    # sorted 0.01 0.02 0.03 0.04 0.5 vs 0.05 * k / 5 = .01 .02 .03 .04 .05: the first four pass
    assert metrics.fdr_significant(p, 0.05).tolist() == [True, True, True, False, True]
    assert not metrics.fdr_significant(np.array([0.2, 0.3]), 0.05).any()


def test_block_bootstrap_of_a_mean_by_hand(rng):
    values = rng.normal(0.3, 1.0, 40)
    boot = metrics.block_bootstrap_means(values, 5, 2000, np.random.default_rng(1))
    rows = metrics.bootstrap_rows(40, 5, np.random.default_rng(2))
    assert rows.size == 40 and all(np.all(np.diff(rows[k:k + 5]) % 40 == 1) for k in range(0, 40, 5))  # wrapping
    assert boot.mean() == pytest.approx(values.mean(), abs=0.01)  # circular blocks weigh every row alike
    assert boot.std() == pytest.approx(values.std() / np.sqrt(40), rel=0.25)  # iid values: the usual SE


def test_jackknife_blocks_never_span_two_stretches_of_rows():
    rows = np.r_[10:40, 100:112, 200:235]  # three runs' test blocks: 30, 12 and 35 TRs
    blocks = metrics.contiguous_blocks(rows, 14)
    assert [len(b) for b in blocks] == [15, 15, 12, 18, 17]  # 30 // 14 = 2 blocks; 12 < 14: one; 35 // 14 = 2
    assert all(np.all(np.diff(rows[b]) == 1) for b in blocks)  # each within one stretch
    np.testing.assert_array_equal(np.concatenate(blocks), np.arange(len(rows)))
    assert [len(b) for b in metrics.contiguous_blocks(np.arange(20), 14)] == [10, 10]  # at least 2 blocks
    assert metrics.block_trs(20.0, 1.5) == 14 and metrics.block_trs(15.0, 1.5) == 10 and metrics.block_trs(20.0, 2.0) == 10


def test_mean_r_and_the_jackknife_standard_error_by_hand_with_scipy(rng):
    n, n_voxels = 40, 6
    signal = ar1(rng, (n, n_voxels))
    measured = np.stack([signal + ar1(rng, (n, n_voxels)) for _ in range(2)])
    a, b = signal + 0.5 * ar1(rng, (n, n_voxels)), signal + 1.5 * ar1(rng, (n, n_voxels))
    voxels = np.array([True, True, False, True, True, True])
    blocks = [np.arange(0, 10), np.arange(10, 25), np.arange(25, 40)]

    def difference(keep):
        def mean_r(p):
            return np.mean([[pearsonr(p[keep, v], m[keep, v]).statistic for v in np.flatnonzero(voxels)]
                            for m in measured])
        return mean_r(a) - mean_r(b)

    left_out = [difference(np.setdiff1d(np.arange(n), block)) for block in blocks]
    expected_se = np.sqrt(2 / 3 * np.sum((np.array(left_out) - np.mean(left_out)) ** 2))
    def mine(keep):
        return metrics.mean_r(a, measured, voxels, keep) - metrics.mean_r(b, measured, voxels, keep)

    assert mine(np.arange(n)) == pytest.approx(difference(np.arange(n)), abs=1e-10)
    assert metrics.jackknife_se(mine, n, blocks) == pytest.approx(expected_se, abs=1e-10)


def test_reconstruction_metrics_by_hand():
    true = np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 0.0]])
    recon = true + np.array([[0.1, -0.1, 0.0], [0.0, 0.0, 0.2]])
    mse = np.array([0.02 / 3, 0.04 / 3])
    np.testing.assert_allclose(metrics.psnr(recon, true, 1.0), 10 * np.log10(1.0 / mse))
    np.testing.assert_allclose(metrics.frame_correlation(recon, true),
                               [pearsonr(recon[0], true[0]).statistic, pearsonr(recon[1], true[1]).statistic])
    np.testing.assert_allclose(metrics.cosine_rows(recon, true),
                               [recon[i] @ true[i] / np.linalg.norm(recon[i]) / np.linalg.norm(true[i]) for i in (0, 1)])


def test_majority_code_baseline_by_hand():
    codes = np.array([[[1, 2, 3]], [[1, 1, 5]]])  # (n=2, n_q=1, T=3)
    train = np.array([[[1, 1, 1]], [[2, 2, 1]]])  # most frequent: 1
    assert metrics.majority_code_accuracy(train, codes) == pytest.approx(3 / 6)


def test_retrieval_top_k_by_hand():
    candidates = np.eye(4)
    reconstructed = np.array([[1.0, 0.2, 0, 0], [0.9, 0.8, 0, 0], [0, 0, 0.1, 1.0]])
    truth = np.array([0, 1, 2])  # first: rank 0; second: rank 1 (0 is closer); third: rank 1
    assert metrics.retrieval_top_k(reconstructed, candidates, truth, 1) == pytest.approx(1 / 3)
    assert metrics.retrieval_top_k(reconstructed, candidates, truth, 2) == pytest.approx(1.0)


def test_leave_one_out_isc_is_each_subjects_r_with_the_others_mean(rng):
    from scipy.stats import pearsonr

    from giblet_kedro.evaluation.metrics import leave_one_out_isc
    data = rng.standard_normal((3, 30, 5)) + rng.standard_normal((1, 30, 5))
    out = leave_one_out_isc(data)
    for s in range(3):
        others = np.delete(data, s, axis=0).mean(0)
        for v in range(5):
            assert out[s, v] == pytest.approx(pearsonr(others[:, v], data[s, :, v]).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 subjects"):
        leave_one_out_isc(data[:1])


def test_seed_spread_is_each_models_mean_r_and_the_ensembles_by_hand(rng):
    """Three models = a shared signal plus each one's own noise: averaging them cancels
    part of the noise, so the ensemble's r beats each model's; every figure by scipy."""
    from scipy.stats import pearsonr

    from giblet_kedro.evaluation.metrics import seed_spread
    signal = rng.standard_normal((40, 6))
    measured = signal[None] + rng.standard_normal((2, 40, 6))
    models = signal[None] + 1.5 * rng.standard_normal((3, 40, 6))
    voxels = np.array([True, True, False, True, True, False])

    def mean_r(prediction):
        return np.mean([np.mean([pearsonr(prediction[:, v], m[:, v]).statistic for v in np.flatnonzero(voxels)])
                        for m in measured])

    out = seed_spread(models, measured, voxels, [0, 7, 9])
    each = [mean_r(p) for p in models]
    assert out["each_mean_r"] == pytest.approx(each, abs=1e-12)
    assert out["sd"] == pytest.approx(np.std(each, ddof=1), abs=1e-12)
    assert out["ensemble_mean_r"] == pytest.approx(mean_r(models.mean(0)), abs=1e-12)
    assert out["ensemble_gain"] > 0.05 and out["seeds"] == [0, 7, 9] and out["voxels"] == 4

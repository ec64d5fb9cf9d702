"""Nulls that hold their error rate voxel by voxel, with realistic autocorrelation and
3 or 17 subjects; each checked against an independent computation, and the shipped
(pooled, one-subject-shifted) nulls shown to fail where the new ones hold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter
from scipy.stats import pearsonr

from giblet_kedro.evaluation import metrics, nulls


def ar(rng: np.random.Generator, phi: float, shape: tuple[int, ...]) -> np.ndarray:
    """AR(1) series along axis -2 (time), unit innovations, after a burn-in."""
    n = shape[-2]
    noise = rng.standard_normal((*shape[:-2], n + 300, shape[-1]))
    return lfilter([1.0], [1.0, -phi], noise, axis=-2)[..., 300:, :]


# ------------------------------------------------------------ against a reference
def test_phase_null_equals_explicit_mirrored_surrogates_scored_with_scipy(rng):
    n, voxels, draws = 23, 5, 7
    prediction = rng.standard_normal((n, voxels))
    measured = rng.standard_normal((2, n, voxels))
    test = nulls.phase_null(prediction, measured, draws, np.random.default_rng(3))
    phases = nulls.random_phases(n, draws, np.random.default_rng(3))
    exceed = np.zeros(voxels)
    observed = np.array([np.mean([pearsonr(prediction[:, v], m[:, v])[0] for m in measured]) for v in range(voxels)])
    for phase in phases:  # by hand: mirror, turn every Fourier phase, keep the first n samples
        centred = prediction - prediction.mean(0)
        spectrum = np.fft.rfft(np.concatenate([centred, centred[::-1]]), axis=0) * np.exp(1j * phase)[:, None]
        surrogate = np.fft.irfft(spectrum, n=2 * n, axis=0)[:n]
        null = [np.mean([pearsonr(surrogate[:, v], m[:, v])[0] for m in measured]) for v in range(voxels)]
        exceed += np.array(null) >= observed - 1e-6
    np.testing.assert_allclose(test.observed, observed, atol=1e-9)
    np.testing.assert_allclose(test.p, (1 + exceed) / (1 + draws))
    assert test.distinct is None and test.min_p == pytest.approx(1 / (1 + draws))


def test_isc_null_equals_every_subject_rolled_by_hand(rng):
    subjects = rng.standard_normal((3, 21, 4))
    test = nulls.isc_null(subjects, 3, 9, np.random.default_rng(5))
    rng5 = np.random.default_rng(5)
    shifts = nulls.allowed_shifts(21, 3)
    lags = shifts[rng5.integers(0, shifts.size, size=(9, 3))]

    def mean_pairwise(data):
        return np.array([np.mean([pearsonr(data[a][:, v], data[b][:, v])[0] for a in range(3) for b in range(a + 1, 3)])
                         for v in range(4)])

    observed = mean_pairwise(subjects)
    exceed = sum(mean_pairwise([np.roll(subjects[s], lag[s], axis=0) for s in range(3)]) >= observed - 1e-6
                 for lag in lags)
    np.testing.assert_allclose(test.observed, observed, atol=1e-6)
    np.testing.assert_allclose(test.p, (1 + exceed) / 10)
    assert test.distinct == shifts.size ** 2  # relative lags of 3 subjects


def test_distinct_null_values_of_a_short_test_split_are_reported(rng):
    prediction, measured = rng.standard_normal((20, 3)), rng.standard_normal((1, 20, 3))
    shifted = nulls.shift_null(prediction, measured, 5, 1000, rng)
    assert shifted.distinct == 11 and shifted.draws == 11
    assert shifted.min_p == pytest.approx(1 / 12)  # above 0.05: nothing could ever be significant
    assert nulls.phase_null(prediction, measured, 200, rng).describe()["distinct_null_values"] == "continuous"


# --------------------------------------------------------------------- error rates
def pooled_p_values(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """The shipped null: circular shifts pooled over every voxel."""
    pooled = np.sort(null.ravel())
    return (1.0 + pooled.size - np.searchsorted(pooled, observed, side="left")) / (1.0 + pooled.size)


@pytest.mark.parametrize("n_trs", [40, 100])
def test_model_r_null_holds_its_rate_for_every_autocorrelation_in_one_brain(rng, n_trs):
    """White, AR(0.5) and AR(0.95) voxels side by side, prediction and measurement
    independent: each kind is flagged at p < 0.05 about 5% of the time. The pooled null
    let the smooth voxels through far more often."""
    per_kind = 2000
    phis = (0.0, 0.5, 0.95)
    prediction = np.concatenate([ar(rng, phi, (n_trs, per_kind)) for phi in phis], axis=1)
    measured = np.concatenate([ar(rng, phi, (n_trs, per_kind)) for phi in phis], axis=1)[None]
    test = nulls.phase_null(prediction, measured, 500, rng)
    rates = [(test.p[k * per_kind:(k + 1) * per_kind] < 0.05).mean() for k in range(3)]
    assert all(rate <= 0.065 for rate in rates), rates
    shifts = nulls.null_shifts(n_trs, 200, 5, rng)
    pooled_null = np.stack([metrics.pearson_columns(np.roll(prediction, int(k), axis=0), measured[0]) for k in shifts])
    pooled = pooled_p_values(test.observed, pooled_null)
    assert (pooled[2 * per_kind:] < 0.05).mean() > 0.1  # the shipped null, on AR(0.95) voxels


@pytest.mark.parametrize("n_subjects", [3, 17])
@pytest.mark.parametrize("n_trs", [40, 95])
def test_isc_null_holds_its_rate_with_realistic_autocorrelation(rng, n_subjects, n_trs):
    """No shared response; each subject's noise AR(0.3), AR(0.6) or AR(0.8) (residual
    BOLD noise after detrending at TR ~1.5 s): at most ~5% of voxels reach p < 0.05."""
    per_kind = 1000
    noise = np.concatenate([ar(rng, phi, (n_subjects, n_trs, per_kind)) for phi in (0.3, 0.6, 0.8)], axis=2)
    test = nulls.isc_null(noise, 5, 400, rng)
    rates = [(test.p[k * per_kind:(k + 1) * per_kind] < 0.05).mean() for k in range(3)]
    assert all(rate <= 0.07 for rate in rates), rates
    assert (test.p < 0.05).mean() <= 0.06


def first_subject_shifted_p(subjects: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """The shipped reliability null: mean pairwise r with the first subject shifted."""
    z = nulls.standardize(subjects)
    observed = nulls.mean_pairwise_isc(subjects)
    null = np.stack([nulls.mean_pairwise_isc(np.concatenate([np.roll(z[:1], int(k), axis=1), z[1:]])) for k in shifts])
    return pooled_p_values(observed, null)


def test_power_does_not_fall_from_3_to_17_subjects(rng):
    """A shared response (AR(0.8)) in every voxel, weak against each subject's AR(0.5)
    noise: the independent-shift null finds more voxels with 17 subjects than with 3. The
    shipped null, which shifted only the first subject, kept the other pairs' real
    agreement inside the null and found fewer."""
    n_trs, voxels = 60, 600
    shared = ar(rng, 0.8, (n_trs, voxels))
    shared /= shared.std(0)
    power, shipped = {}, {}
    for n_subjects in (3, 17):
        subjects = 0.35 * shared[None] + ar(rng, 0.5, (n_subjects, n_trs, voxels)) * np.sqrt(1 - 0.25)
        power[n_subjects] = (nulls.isc_null(subjects, 5, 400, rng).p < 0.05).mean()
        shipped[n_subjects] = (first_subject_shifted_p(subjects, nulls.null_shifts(n_trs, 50, 5, rng)) < 0.05).mean()
    assert power[17] >= power[3] and power[17] > 0.9, power
    assert shipped[17] < shipped[3], shipped

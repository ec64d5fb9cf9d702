"""Censored volumes: which TRs, the cleaning that leaves them out, and the rows and samples
that remain (see ``giblet_kedro.fmri.censor``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from nilearn import signal
from scipy.interpolate import CubicSpline

from giblet_kedro.fmri import censor
from giblet_kedro.fmri.clean import blockwise_operator, cleaning_operator
from giblet_kedro.spec.schema import CleanSpec
from giblet_kedro.training.data import TrDataset
from giblet_kedro.training.job import ArrayPaths, compute_loss_stats, job_rows
from giblet_kedro.training.losses import ModalityStats

TR = 1.5
N = 60
CENSORED = np.array([0, 5, 6, 30, 59])  # the first and last volumes too: nothing to interpolate from
KEPT = np.setdiff1d(np.arange(N), CENSORED)


@pytest.fixture
def series():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, 7)) + np.linspace(0, 3, N)[:, None], rng.standard_normal((N, 3))


def test_censored_trs_follow_the_table_rows_the_skip_and_the_crop():
    kept_rows = [r for r in range(14) if r not in (3, 4, 9)]  # table rows; 2 rows precede the run
    # file TRs 1, 2 and 7 are censored; the crop [1, 10) makes them 0, 1 and 6
    assert censor.censored_trs(kept_rows, 2, (1, 10)).tolist() == [0, 1, 6]
    assert censor.censored_trs(None, 2, (1, 10)).size == 0


@pytest.mark.parametrize("settings", [{"detrend": True}, {"detrend": True, "high_pass_hz": 0.01, "filter": "cosine"}])
@pytest.mark.parametrize("with_confounds", [False, True])
def test_cleaning_with_censoring_is_nilearns_sample_mask(series, settings, with_confounds):
    """Detrending, the cosine filter and confound regression: the operator applied to the
    data is nilearn's signal.clean(..., sample_mask) on the kept TRs, and 0 elsewhere."""
    data, confounds = series
    confounds = confounds if with_confounds else None
    clean = CleanSpec(**settings)
    operator = cleaning_operator(N, TR, clean, confounds, CENSORED)
    expected = signal.clean(data, detrend=True, standardize=None, confounds=confounds,
                            filter="cosine" if clean.high_pass_hz else False, high_pass=clean.high_pass_hz, t_r=TR,
                            sample_mask=KEPT)
    np.testing.assert_allclose((operator @ data)[KEPT], expected, atol=1e-10)
    assert not operator[CENSORED].any() and not operator[:, CENSORED].any()


def test_butterworth_with_censoring_interpolates_by_cubic_spline_like_nilearn_means_to(series):
    """Butterworth: censored volumes are replaced by the cubic spline through the kept ones
    (scipy by hand), the span between the first and last kept volume is filtered (nilearn,
    no censoring), and the kept TRs are returned. nilearn 0.14's own path replaces the
    wrong rows (``~`` on an integer index), which this reference does not depend on."""
    data, _ = series
    clean = CleanSpec(detrend=True, high_pass_hz=0.01, low_pass_hz=0.1, filter="butterworth")
    start, stop = KEPT[0], KEPT[-1] + 1
    interpolated = CubicSpline(KEPT * TR, data[KEPT])(np.arange(start, stop) * TR)
    expected = signal.clean(interpolated, detrend=True, standardize=None, filter="butterworth", low_pass=0.1,
                            high_pass=0.01, t_r=TR)[KEPT - start]
    operator = cleaning_operator(N, TR, clean, None, CENSORED)
    np.testing.assert_allclose((operator @ data)[KEPT], expected, atol=1e-10)


@pytest.mark.parametrize("settings", [{"detrend": True}, {"detrend": True, "high_pass_hz": 0.01, "low_pass_hz": 0.1,
                                                          "filter": "butterworth"}])
def test_a_spike_in_a_censored_volume_reaches_no_kept_tr(series, settings):
    data, confounds = series
    clean = CleanSpec(**settings)
    spiked = data.copy()
    spiked[30] += 1e4
    censored = cleaning_operator(N, TR, clean, confounds, CENSORED)
    np.testing.assert_allclose(censored @ spiked, censored @ data, atol=1e-8)
    uncensored = cleaning_operator(N, TR, clean, confounds, None)  # the misconfigured case: the spike spreads
    assert np.abs(uncensored @ spiked - uncensored @ data)[KEPT].max() > 10


def test_blockwise_cleaning_censors_inside_each_block(series):
    data, confounds = series
    clean = CleanSpec(detrend=True)
    blocks = [slice(0, 40), slice(40, 60)]
    operator = blockwise_operator(blocks, TR, clean, confounds, np.array([3, 45]))
    for rows, inside in zip(blocks, ([3], [5]), strict=True):
        kept = np.setdiff1d(np.arange(rows.stop - rows.start), inside)
        expected = signal.clean(data[rows], detrend=True, standardize=None, confounds=confounds[rows], filter=False,
                                t_r=TR, sample_mask=kept)
        np.testing.assert_allclose((operator @ data)[rows][kept], expected, atol=1e-10)
    assert not operator[:40, 40:].any() and not operator[:, [3, 45]].any()


def _split(labels):
    return pd.DataFrame({"tr": np.arange(len(labels)), "split": labels})


def test_coverage_and_usable_rows_by_hand():
    stats = {"subject_ids": np.array(["01", "02"]), "run_ids": np.array(["1", "2"]),
             "run_1_crop": np.array([2, 6]), "run_2_crop": np.array([0, 4]),
             "subject_01_run_1_censored": np.array([1]), "subject_02_run_1_censored": np.array([1, 3]),
             "subject_02_run_2_censored": np.array([2])}
    covered = censor.coverage(stats)
    expected = np.ones((2, 8), bool)
    expected[0, 1] = expected[1, 1] = expected[1, 3] = expected[1, 6] = False
    np.testing.assert_array_equal(covered, expected)
    split = _split(["train"] * 4 + ["val", "val", "test", "test"])
    assert censor.usable_rows(split, covered, "train").tolist() == [0, 2, 3]  # 1: every subject censored
    assert censor.usable_rows(split, covered, "val").tolist() == [4, 5]
    assert censor.usable_rows(split, covered, "test").tolist() == [7]  # 6: subject 02 censored
    rows = job_rows(split, covered)
    assert rows["train"].tolist() == [0, 2, 3] and rows["test"].tolist() == [7]


def test_job_rows_refuse_a_test_part_censored_away():
    covered = np.ones((2, 10), bool)
    covered[0, 8:] = False
    with pytest.raises(ValueError, match="every test TR is censored in at least one subject"):
        job_rows(_split(["train"] * 8 + ["test"] * 2), covered)


def test_a_censored_sample_counts_for_nothing_in_training(tmp_path):
    """per_subject: sample (subject 1, TR 2) is censored: its fMRI and its stimulus are
    invalid, the other subject's sample at TR 2 is not; the loss statistics leave the
    censored volume out (numpy by hand)."""
    rng = np.random.default_rng(1)
    fmri = rng.standard_normal((2, 6, 3)).astype(np.float32)
    fmri[1, 2] = 1e3  # what a censored volume must not contribute
    text = rng.standard_normal((6, 4)).astype(np.float32)
    covered = np.ones((2, 6), bool)
    covered[1, 2] = False
    for name, array in (("fmri", fmri), ("text", text), ("text_valid", np.ones(6, bool)), ("covered", covered)):
        np.save(tmp_path / f"{name}.npy", array)
    paths = ArrayPaths(fmri=str(tmp_path / "fmri.npy"), values={"text": str(tmp_path / "text.npy")},
                       valid={"text": str(tmp_path / "text_valid.npy")}, fmri_valid=str(tmp_path / "covered.npy"))

    class Aligned:
        values, valid = text, np.ones(6, bool)

    rows = np.arange(5)
    stats = compute_loss_stats(np.load(tmp_path / "fmri.npy", mmap_mode="r"), rows, {"text": Aligned}, covered)
    samples = np.concatenate([fmri[0, rows], fmri[1, [0, 1, 3, 4]]]).astype(np.float64)
    np.testing.assert_allclose(stats["fmri"].mean, samples.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["fmri"].std, samples.std(0), rtol=1e-6)

    unit = {k: ModalityStats(mean=np.zeros(s), std=np.ones(s)) for k, s in (("fmri", 3), ("text", 4))}
    dataset = TrDataset(paths, np.array([1, 2]), "per_subject", unit, audio_is_codes=False)
    batch = dataset.__getitems__([0, 1, 2, 3])  # (0, 1), (0, 2), (1, 1), (1, 2)
    assert batch["fmri_valid"].tolist() == [True, True, True, False]
    assert batch["text_valid"].tolist() == [True, True, True, False]


def test_the_verification_expects_no_sample_at_a_tr_censored_in_every_subject():
    """The sample count check reads the censored volumes from the saved statistics: TR 1
    (censored in both subjects) is no training sample; a run that drew it fails."""
    from giblet_kedro.spec.schema import FmriSpec
    from giblet_kedro.training.verification import _coverage, check_samples_drawn

    stats = {"subject_ids": np.array(["01", "02"]), "run_ids": np.array(["1"]), "run_1_crop": np.array([0, 8]),
             "subject_01_run_1_censored": np.array([1, 2]), "subject_02_run_1_censored": np.array([1])}
    split = _split(["train"] * 6 + ["test"] * 2).assign(run="1")
    covered = _coverage(stats, split)
    assert (~covered.any(axis=0)).sum() == 1
    fmri = FmriSpec(subjects={"01": "a.nii.gz", "02": "b.nii.gz"}, tr=1.5)
    # no context (1 lag), windows of 8: TR 0 and TRs 2-5 are two stretches, two windows
    drew = {"world_size": 1, "epoch1_drawn": {"distinct_samples": 5, "windows": 2, "batches_per_rank": [1]}}
    assert check_samples_drawn(drew, split, fmri, 8, 1, 8, covered)["pass"]
    drew_all = {"world_size": 1, "epoch1_drawn": {"distinct_samples": 6, "windows": 1, "batches_per_rank": [1]}}
    assert not check_samples_drawn(drew_all, split, fmri, 8, 1, 8, covered)["pass"]


def test_the_ridge_target_averages_the_uncensored_subjects():
    tensor = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    covered = np.array([[True, False, True], [True, True, True]])
    expected = tensor.mean(0)
    expected[1] = tensor[1, 1]  # subject 0 censored at TR 1
    np.testing.assert_allclose(censor.uncensored_mean(tensor, covered), expected)

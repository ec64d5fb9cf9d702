"""In-silico building blocks, each against values computed by hand with numpy, and the
mistake each exists to catch."""

from __future__ import annotations

import numpy as np
import pytest

from giblet_kedro.errors import InputDataError
from giblet_kedro.evaluation import insilico
from giblet_kedro.stimulus.aligned import TrGrid
from giblet_kedro.training.losses import ModalityStats


def test_a_movie_is_cut_into_whole_trs_from_the_onset():
    grid = insilico.movie_grid(10.0, 1.5, 0.0, "predict.stimulus")
    assert grid.n_trs == 6 and np.allclose(grid.window_starts(), 1.5 * np.arange(6))
    late = insilico.movie_grid(10.0, 1.5, 1.0, "predict.stimulus")
    assert late.n_trs == 6 and np.allclose(late.window_starts(), 1.0 + 1.5 * np.arange(6))
    assert insilico.movie_grid(9.0, 1.5, 0.0, "x").n_trs == 6  # exactly six windows: no float loss
    with pytest.raises(InputDataError, match=r"predict.stimulus: the movie lasts 1.400 s, less than one TR"):
        insilico.movie_grid(1.4, 1.5, 0.0, "predict.stimulus")


def test_a_repeat_of_the_training_movie_is_scored_on_the_test_windows_only():
    """The training grid has two runs; their test TRs sit at known movie times. Only the
    predicted TRs over those windows may be scored (the model saw every train TR's
    stimulus); a new movie is scored everywhere."""
    tr = 1.5
    grid = TrGrid(tr=tr, runs=(TrGrid.single(tr, 0, 20, 0.0, "1").runs[0], TrGrid.single(tr, 0, 20, 30.0, "2").runs[0]))
    labels = np.array((["train"] * 14 + ["val"] * 3 + ["test"] * 3) * 2)
    test_starts = grid.window_starts()[labels == "test"]
    predicted = np.arange(40) * tr  # the whole movie from 0 s, TR for TR
    rows = insilico.scored_rows(predicted, test_starts, tr)
    expected = np.concatenate([np.arange(17, 20), np.arange(37, 40)])  # by hand: 25.5-28.5 s and 55.5-58.5 s
    np.testing.assert_array_equal(rows, expected)
    # a prediction that starts half a TR late matches no window closely enough to be scored as the same TR
    assert insilico.scored_rows(predicted + 0.75, test_starts, tr).size == 0
    np.testing.assert_array_equal(insilico.scored_rows(predicted, None, tr), np.arange(40))
    assert insilico.scored_rows(predicted, np.zeros(0), tr).size == 0


def _stats(rng):
    video = ModalityStats(mean=rng.normal(size=(1, 3)), std=rng.uniform(0.5, 2, size=(1, 3)))
    marginal = rng.dirichlet(np.ones(1024), size=2)
    marginal[0, 7], marginal[1, 900] = 5.0, 5.0  # the most frequent code of each codebook
    audio = ModalityStats(entropy=np.ones(2), marginal=marginal / marginal.sum(axis=1, keepdims=True))
    return {"video": video, "audio": audio}


def test_model_inputs_standardize_with_the_training_stats_and_ablate_to_the_training_mean(rng):
    stats = _stats(rng)
    video = rng.normal(size=(5, 2, 3)).astype(np.float32)
    codes = rng.integers(0, 1024, size=(5, 2, 4))
    valid = {"video": np.array([1, 1, 0, 1, 1], bool), "audio": np.array([1, 1, 1, 1, 0], bool)}
    shapes = {"video": (2, 3), "audio": (2, 4)}
    inputs = insilico.model_inputs({"video": video, "audio": codes}, valid, stats, shapes, [], True, 5)
    by_hand = (video - stats["video"].mean) / stats["video"].std
    by_hand[2] = 0.0  # a TR the movie does not cover: the training mean
    np.testing.assert_allclose(inputs["video"], by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(inputs["audio"][:4], codes[:4])
    np.testing.assert_array_equal(inputs["audio"][4], [[7] * 4, [900] * 4])
    ablated = insilico.model_inputs({"video": video, "audio": codes}, valid, stats, shapes, ["video", "audio"],
                                    True, 5)
    assert not ablated["video"].any() and ablated["video"].shape == (5, 2, 3)
    np.testing.assert_array_equal(ablated["audio"][:, 0], 7)
    np.testing.assert_array_equal(ablated["audio"][:, 1], 900)
    with pytest.raises(InputDataError, match=r"its video features have shape \[2, 4\] per TR, the model was "
                                             r"trained on \[2, 3\]"):
        insilico.model_inputs({"video": rng.normal(size=(5, 2, 4))}, valid, stats, {"video": (2, 3)}, [], True, 5)


def test_restore_inverts_standardize(rng):
    stats = ModalityStats(mean=rng.normal(size=7), std=np.r_[rng.uniform(0.5, 2, size=6), 0.0])
    values = rng.normal(size=(9, 7)).astype(np.float32)
    values[:, 6] = stats.mean[6]  # a constant feature: std 0, kept as is
    np.testing.assert_allclose(stats.restore(stats.standardize(values)), values, rtol=1e-5, atol=1e-5)


def test_missing_modalities_name_what_must_be_given_or_ablated():
    assert insilico.missing_modalities(["video", "audio", "text"], ["video", "audio"], []) == ["text"]
    assert insilico.missing_modalities(["video", "text"], ["video"], ["text"]) == []


def test_the_ablation_effect_is_the_share_of_variance_a_planted_component_carries(rng):
    n, v = 200, 4
    kept = rng.normal(size=(n, v))
    carried = rng.normal(size=(n, v)) * np.array([0.0, 0.5, 1.0, 3.0])
    full = kept + carried
    effect = insilico.ablation_effect(full, kept)
    by_hand = np.array([np.var(carried[:, i]) / np.var(full[:, i]) for i in range(v)])
    np.testing.assert_allclose(effect, by_hand, rtol=1e-10)
    assert effect[0] == 0 and effect[3] > 0.8
    assert insilico.ablation_effect(np.ones((5, 2)), np.zeros((5, 2))).tolist() == [0.0, 0.0]


def test_a_contrast_subtracts_the_segments_means_over_whole_trs(rng):
    tr = 1.5
    starts = np.arange(40) * tr
    prediction = rng.normal(size=(40, 3))
    prediction[:10, 1] += 2.0  # planted: voxel 1 responds more in the first 15 s
    a = insilico.segment_rows(starts, tr, (0.0, 15.0), "predict.contrast.a")
    b = insilico.segment_rows(starts, tr, (30.0, 45.0), "predict.contrast.b")
    np.testing.assert_array_equal(a, np.arange(10))
    np.testing.assert_array_equal(b, np.arange(20, 30))
    contrast = insilico.contrast_map(prediction, a, b)
    np.testing.assert_allclose(contrast["difference"], prediction[:10].mean(0) - prediction[20:30].mean(0),
                               rtol=1e-5)
    assert int(np.argmax(contrast["t"])) == 1 and contrast["t"][1] > 3
    with pytest.raises(InputDataError, match=r"predict.contrast.b: the segment \[70, 71\] s holds no whole TR"):
        insilico.segment_rows(starts, tr, (70.0, 71.0), "predict.contrast.b")


def _ar1(rng, n: int, width: int, phi: float) -> np.ndarray:
    """(n, width) stationary AR(1) series of unit variance."""
    out = np.empty((n, width))
    out[0] = rng.normal(size=width)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + np.sqrt(1 - phi ** 2) * rng.normal(size=width)
    return out


def _shift_test_world(rng, n_subjects: int, follows_modality: bool, n_trs: int = 240, voxels: int = 12):
    """A movie with two modalities (m, the one tested, and o), each a smooth AR(1) series
    (phi 0.9, as HRF-convolved features are); a model whose prediction reads both; each
    subject's voxels follow o (the null) or m, plus AR(1) noise (phi 0.7, BOLD-like);
    the test rows are a block at the end, as the split's test TRs."""
    m, o = _ar1(rng, n_trs, 3, 0.9), _ar1(rng, n_trs, 3, 0.9)
    w_m, w_o = rng.normal(size=(3, voxels)), rng.normal(size=(3, voxels))
    rows = np.arange(n_trs - 60, n_trs)
    driver = (m @ w_m if follows_modality else o @ w_o)[rows]
    measured = np.stack([0.5 * driver + _ar1(rng, n_trs, voxels, 0.7)[rows] for _ in range(n_subjects)])

    def predict(shift: int) -> np.ndarray:
        return np.roll(m, shift, axis=0) @ w_m + o @ w_o

    return predict, measured, rows


@pytest.mark.parametrize("n_subjects", [3, 17])
def test_the_modality_shift_test_holds_its_error_rate_with_autocorrelated_data(n_subjects):
    """Voxels that follow the other modality only: at most about 5% p < 0.05, over 150
    independent movies with autocorrelated features and noise, for 3 and 17 subjects."""
    rng = np.random.default_rng(n_subjects)
    p_values = []
    for _ in range(150):
        predict, measured, rows = _shift_test_world(rng, n_subjects, follows_modality=False)
        shifts = rng.choice(np.arange(10, 240 - 10 + 1), size=49, replace=False)
        p_values.append(insilico.modality_shift_test(predict, measured, rows, shifts)[2])
    p_values = np.concatenate(p_values)
    rate = float((p_values < 0.05).mean())
    assert rate <= 0.08, rate  # nominal 0.05; 1,800 correlated tests
    assert p_values.min() >= 1 / 50  # the smallest p 49 shifts allow


@pytest.mark.parametrize("n_subjects", [3, 17])
def test_the_modality_shift_test_finds_voxels_that_follow_the_modality(n_subjects):
    rng = np.random.default_rng(100 + n_subjects)
    found = []
    for _ in range(20):
        predict, measured, rows = _shift_test_world(rng, n_subjects, follows_modality=True)
        shifts = rng.choice(np.arange(10, 240 - 10 + 1), size=49, replace=False)
        observed, drop, p = insilico.modality_shift_test(predict, measured, rows, shifts)
        found.append(p < 0.05)
        assert np.mean(drop) > 0.1
    assert np.mean(found) >= 0.6


def test_shifting_the_whole_prediction_instead_of_the_modality_would_fail_the_error_rate():
    """The mistake the test guards against: a null that shifts every input (the whole
    prediction) attributes to the tested modality what the other one explains."""
    rng = np.random.default_rng(7)
    p_values = []
    for _ in range(30):
        predict, measured, rows = _shift_test_world(rng, 3, follows_modality=False)
        shifts = rng.choice(np.arange(10, 231), size=49, replace=False)
        whole = lambda shift, predict=predict: np.roll(predict(0), shift, axis=0)  # noqa: E731
        p_values.append(insilico.modality_shift_test(whole, measured, rows, shifts)[2])
    assert float((np.concatenate(p_values) < 0.05).mean()) > 0.5


def test_two_movies_are_contrasted_voxel_by_voxel_and_a_foreign_grid_is_refused(tmp_path, rng):
    import nibabel as nib
    from click.testing import CliRunner

    from giblet_kedro.cli import giblet

    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    inside = np.zeros((4, 3, 2), bool)
    inside[1:3, :, 1] = True  # 6 predicted voxels
    a, b = np.zeros((4, 3, 2, 20), np.float32), np.zeros((4, 3, 2, 30), np.float32)
    a[inside] = rng.normal(size=(6, 20)) + np.arange(6)[:, None] * 0.5  # planted: A exceeds B by 0.5 k
    b[inside] = rng.normal(size=(6, 30))
    nib.save(nib.Nifti1Image(a, affine), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(b, affine), tmp_path / "b.nii.gz")
    result = CliRunner().invoke(giblet, ["contrast", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"),
                                         "-o", str(tmp_path / "c.nii.gz")])
    assert result.exit_code == 0, result.output
    assert "over 6 voxels" in result.output
    out = np.asarray(nib.load(tmp_path / "c.nii.gz").dataobj)
    by_hand = a[inside].mean(1) - b[inside].mean(1)
    np.testing.assert_allclose(out[inside][:, 0], by_hand, rtol=1e-5, atol=1e-6)
    welch = by_hand / np.sqrt(a[inside].var(1, ddof=1) / 20 + b[inside].var(1, ddof=1) / 30)
    np.testing.assert_allclose(out[inside][:, 1], welch, rtol=1e-4)
    assert not out[~inside].any()
    nib.save(nib.Nifti1Image(b, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "other.nii.gz")
    with pytest.raises(InputDataError, match="B: grid .* does not match A's"):
        insilico.movie_contrast(nib.load(tmp_path / "a.nii.gz"), nib.load(tmp_path / "other.nii.gz"), ("A", "B"))
    with pytest.raises(InputDataError, match="A: shape \\(4, 3, 2\\); accepted: a predicted response, 4D"):
        insilico.movie_contrast(nib.Nifti1Image(a[..., 0], affine), nib.load(tmp_path / "b.nii.gz"), ("A", "B"))

"""The scoring nodes on planted data, in both modes, against numpy/scipy by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter
from scipy.stats import pearsonr
from scipy.stats import t as student_t

from giblet_kedro.evaluation import metrics
from giblet_kedro.evaluation.agreement import agreement_arrays
from giblet_kedro.models.autoencoder import ModalityShapes
from giblet_kedro.pipelines.evaluate.nodes import compare_models, score_voxels, summarize_evaluation
from giblet_kedro.spec.schema import EvaluateSpec
from giblet_kedro.training.job import ArrayPaths, TrainJob

N_TRS, N_VOXELS, N_SUBJECTS = 120, 40, 3
SIGNAL = slice(0, 20)  # voxels that carry the shared response


def planted(rng):
    """Subjects = shared response (first 20 voxels) + own noise; rows 80-99 val, 100-119 test."""
    shared = np.zeros((N_TRS, N_VOXELS))
    shared[:, SIGNAL] = rng.standard_normal((N_TRS, 20))
    subjects = (shared[None] + rng.standard_normal((N_SUBJECTS, N_TRS, N_VOXELS))).astype(np.float32)
    split = pd.DataFrame({"tr": np.arange(N_TRS), "run": "1",
                          "split": ["train"] * 80 + ["val"] * 20 + ["test"] * 20})
    mask = np.zeros((4, 5, 3), bool)
    mask.reshape(-1)[np.arange(N_VOXELS) + 10] = True
    stats = {"mask": mask, "affine": np.diag([2.0, 2.0, 2.0, 1.0]), "subject_ids": np.array(["a", "b", "c"])}
    return shared, subjects, split, stats


def job_of(tmp_path, tensor: np.ndarray, mode: str) -> dict:
    np.save(tmp_path / "fmri.npy", tensor)
    return TrainJob(paths=ArrayPaths(fmri=str(tmp_path / "fmri.npy")), train_rows=list(range(80)),
                    val_rows=list(range(80, 100)), mode=mode,
                    shapes=ModalityShapes(None, None, False, (4,), N_VOXELS), model={}, loss={}, train={}, seed=0,
                    run_dir=str(tmp_path), test_rows=list(range(100, 120)), tr=1.5).to_dict()


@pytest.mark.parametrize("mode", ["cross_subject", "per_subject"])
def test_scores_match_hand_computation_and_planted_voxels(tmp_path, rng, mode):
    shared, subjects, split, stats = planted(rng)
    test, val = np.arange(100, 120), np.arange(80, 100)
    tensor = subjects.mean(0) if mode == "cross_subject" else subjects
    good = shared[test] + 0.3 * rng.standard_normal((20, N_VOXELS))  # the "autoencoder"
    poor = 0.2 * shared[test] + rng.standard_normal((20, N_VOXELS))  # the "ridge"
    target = "average" if mode == "cross_subject" else "subject"
    agreement = agreement_arrays(subjects[:, val], subjects[:, test], target, 3, 500, rng)
    scores, image, maps = score_voxels({"rows": test, "fmri": good}, {"rows": test, "fmri": poor}, agreement,
                                       job_of(tmp_path, tensor, mode), split, stats,
                                       EvaluateSpec(null_draws=500, min_shift_trs=3))
    targets = [tensor[test]] if mode == "cross_subject" else list(subjects[:, test])
    by_hand = np.mean([[pearsonr(good[:, v], t[:, v]).statistic for v in range(N_VOXELS)] for t in targets], axis=0)
    np.testing.assert_allclose(maps["r_model"], by_hand, atol=1e-6)
    np.testing.assert_allclose(np.asarray(image.dataobj)[stats["mask"]], by_hand, atol=1e-6)
    assert np.asarray(image.dataobj)[~stats["mask"]].max() == 0
    assert maps["significant"][SIGNAL].mean() > 0.8 and maps["significant"][20:].mean() < 0.2
    assert maps["reliable"][SIGNAL].mean() >= 0.7 and maps["reliable"][20:].mean() < 0.2  # chosen on val rows
    assert scores["comparison"]["verdict"] == "better"
    # 20 test TRs allow 15 circular shifts of >= 3 TRs: the report says so, and that phase
    # randomization reaches p = 1/501
    assert scores["null"]["test_split_allows"]["circular_shifts"] == 15
    assert scores["null"]["distinct_null_values"] == "continuous" and scores["null"]["min_p"] == pytest.approx(1 / 501)
    # planted: unit shared and unit noise variance -> rho = 1/2 on signal voxels
    expected = np.sqrt(3 * 0.5 / (1 + 2 * 0.5)) if mode == "cross_subject" else np.sqrt(0.5)
    assert maps["ceiling"][SIGNAL].mean() == pytest.approx(expected, abs=0.12)
    assert list(scores["by_run"]) == ["1"]
    assert ("by_subject" in scores) == (mode == "per_subject")
    summary = summarize_evaluation(scores, {"text": {}}, {"delays_trs": [0]},
                                   {"epochs": [{}, {}], "selected": {"epoch": 1, "reason": "best"}}, {"name": "t"})
    assert summary["weights"] == {"epoch": 1, "reason": "best", "epochs_run": 2}
    assert summary["autoencoder_beats_ridge"] and summary["ridge"]["delays_trs"] == [0]


def test_each_subject_is_scored_against_its_own_leave_one_out_ceiling(tmp_path, rng):
    """Subjects = shared + own component + noise: a head that knows each subject's own
    component beats the average brain on that subject, and both are divided by that
    subject's r with the others' mean, computed here with scipy."""
    shared, _, split, stats = planted(rng)
    test, val = np.arange(100, 120), np.arange(80, 100)
    own = np.zeros((N_SUBJECTS, N_TRS, N_VOXELS))
    own[:, :, SIGNAL] = rng.standard_normal((N_SUBJECTS, N_TRS, 20))
    subjects = (shared[None] + own + 0.5 * rng.standard_normal((N_SUBJECTS, N_TRS, N_VOXELS))).astype(np.float32)
    heads = (shared[None] + own)[:, test].astype(np.float32)
    agreement = agreement_arrays(subjects[:, val], subjects[:, test], "subject", 3, 200, rng)
    scores, _, maps = score_voxels({"rows": test, "fmri": shared[test], "subjects_fmri": heads},
                                   {"rows": test, "fmri": shared[test]}, agreement,
                                   job_of(tmp_path, subjects, "per_subject"), split, stats,
                                   EvaluateSpec(null_draws=200, min_shift_trs=3))
    voxels = maps["reliable"]
    assert voxels[SIGNAL].mean() > 0.7
    for index, sid in enumerate(["a", "b", "c"]):
        entry = scores["by_subject"][sid]
        others = np.delete(subjects[:, test], index, axis=0).mean(0)
        ceiling = np.mean([pearsonr(others[:, v], subjects[index, test][:, v]).statistic for v in np.flatnonzero(voxels)])
        head = np.mean([pearsonr(heads[index][:, v], subjects[index, test][:, v]).statistic
                        for v in np.flatnonzero(voxels)])
        assert entry["loo_ceiling"] == pytest.approx(ceiling, abs=1e-6)
        assert entry["head_mean_r"] == pytest.approx(head, abs=1e-6)
        assert entry["head_r_over_ceiling"] == pytest.approx(head / ceiling, abs=1e-6)
        assert entry["head_gain"] > 0.1, entry
    # without heads, only the average brain is scored
    plain, _, _ = score_voxels({"rows": test, "fmri": shared[test]}, {"rows": test, "fmri": shared[test]}, agreement,
                               job_of(tmp_path, subjects, "per_subject"), split, stats,
                               EvaluateSpec(null_draws=200, min_shift_trs=3))
    assert set(plain["by_subject"]["a"]) == {"average_brain_mean_r", "loo_ceiling", "average_brain_r_over_ceiling"}


def _ar(rng, phi: float, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance AR(1) series along axis 0."""
    return lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], rng.standard_normal(shape), axis=0)


def _test_set(rng, stretches: int, n: int = 90, n_voxels: int = 40):
    """A simulated test set: ``stretches`` independent runs' blocks of n / stretches TRs, a
    shared AR(0.8) signal, AR(0.5) measurement noise, and two predictions whose errors are
    AR(0.9), of SD 0.8 and 1.2."""
    parts = []
    for _ in range(stretches):
        length = n // stretches
        signal = _ar(rng, 0.8, (length, n_voxels))
        parts.append((signal + 0.8 * _ar(rng, 0.9, (length, n_voxels)), signal + 1.2 * _ar(rng, 0.9, (length, n_voxels)),
                      signal + _ar(rng, 0.5, (length, n_voxels))))
    a, b, measured = (np.concatenate(x) for x in zip(*parts))
    rows = np.concatenate([np.arange(n // stretches) + 1000 * k for k in range(stretches)])
    return a, b, measured[None], rows


@pytest.mark.parametrize("stretches", [1, 3])
def test_the_comparison_interval_covers_with_ar09_errors_where_a_5_tr_bootstrap_does_not(stretches):
    """Over 400 simulated test sets of 90 TRs at TR 1.5 s (one block, or three runs' blocks
    of 30), the 95% interval of the autoencoder-vs-ridge comparison (blocks of at least
    20 s) covers the expected difference 93-99% of the time. The circular-block
    bootstrap over 5-TR blocks that it replaces covers under 90% of the same sets."""
    rng = np.random.default_rng(7)
    voxels = np.ones(40, dtype=bool)

    def difference(a, b, measured, keep):
        return (metrics.pearson_columns(a[keep], measured[0][keep]).mean()
                - metrics.pearson_columns(b[keep], measured[0][keep]).mean())

    expected = np.mean([difference(*_test_set(rng, stretches)[:3], np.arange(90)) for _ in range(3000)])
    covered = []
    for _ in range(400):
        a, b, measured, rows = _test_set(rng, stretches)
        blocks = metrics.contiguous_blocks(rows, metrics.block_trs(EvaluateSpec().block_s, 1.5))
        low, high = compare_models(a, b, measured, voxels, blocks, "all voxels")["ci95"]
        covered.append(low <= expected <= high)
    assert 0.93 <= np.mean(covered) <= 0.99, np.mean(covered)  # neither too narrow nor needlessly wide
    if stretches == 1:  # the interval it replaces, on the same kind of data
        old = []
        for _ in range(150):
            a, b, measured, _ = _test_set(rng, 1)
            boot = [difference(a, b, measured, metrics.bootstrap_rows(90, 5, rng)) for _ in range(200)]
            low, high = np.percentile(boot, [2.5, 97.5])
            old.append(low <= expected <= high)
        assert np.mean(old) < 0.90, np.mean(old)


def test_the_comparison_interval_adds_the_seeds_spread_of_an_ensemble(rng):
    """With S seeds of SD s, the standard error is sqrt(jackknife^2 + s^2 / S); one seed
    adds nothing."""
    a, b, measured, rows = _test_set(rng, 1)
    blocks = metrics.contiguous_blocks(rows, 14)
    alone = compare_models(a, b, measured, np.ones(40, bool), blocks, "all voxels")
    one = compare_models(a, b, measured, np.ones(40, bool), blocks, "all voxels", {"seeds": [0], "sd": 0.0})
    four = compare_models(a, b, measured, np.ones(40, bool), blocks, "all voxels", {"seeds": [0, 1, 2, 3], "sd": 0.1})
    assert one["ci95"] == alone["ci95"]
    assert four["standard_error"] == pytest.approx(np.sqrt(alone["standard_error"] ** 2 + 0.1**2 / 4))
    half = four["ci95"][1] - four["difference"]
    assert half == pytest.approx(student_t.ppf(0.975, len(blocks) - 1) * four["standard_error"])
    assert "4 seeds" in four["interval"] and "seeds" not in alone["interval"]

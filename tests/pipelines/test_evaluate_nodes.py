"""The scoring node on planted data, in both modes, against numpy/scipy by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr

from giblet_kedro.evaluation.metrics import InterSubject
from giblet_kedro.pipelines.evaluate.nodes import score_evaluation
from giblet_kedro.spec.schema import EvaluateSpec

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


@pytest.mark.parametrize("mode", ["cross_subject", "per_subject"])
def test_scores_match_hand_computation_and_planted_voxels(rng, mode):
    shared, subjects, split, stats = planted(rng)
    test, val = np.arange(100, 120), np.arange(80, 100)
    tensor = subjects.mean(0) if mode == "cross_subject" else subjects
    good = shared[test] + 0.3 * rng.standard_normal((20, N_VOXELS))  # the "autoencoder"
    poor = 0.2 * shared[test] + rng.standard_normal((20, N_VOXELS))  # the "ridge"
    agreement = {**InterSubject.accumulate(subjects[:, val]).to_arrays("val"),
                 **InterSubject.accumulate(subjects[:, test]).to_arrays("test")}
    metrics, image, maps = score_evaluation(
        {"rows": test, "fmri": good}, {"rows": test, "fmri": poor}, {"delays_trs": [0]}, {}, agreement, tensor,
        split, stats, EvaluateSpec(null_shifts=100, min_shift_trs=3), {"name": "t", "seed": 0})
    targets = [tensor[test]] if mode == "cross_subject" else list(subjects[:, test])
    by_hand = np.mean([[pearsonr(good[:, v], t[:, v]).statistic for v in range(N_VOXELS)] for t in targets], axis=0)
    np.testing.assert_allclose(maps["r_model"], by_hand, atol=1e-6)
    np.testing.assert_allclose(np.asarray(image.dataobj)[stats["mask"]], by_hand, atol=1e-6)
    assert np.asarray(image.dataobj)[~stats["mask"]].max() == 0
    assert maps["significant"][SIGNAL].mean() > 0.8 and maps["significant"][20:].mean() < 0.2
    assert maps["reliable"][SIGNAL].mean() >= 0.7 and maps["reliable"][20:].mean() < 0.2  # chosen on val rows
    assert metrics["comparison"]["verdict"] == "better" and metrics["autoencoder_beats_ridge"]
    ceiling = metrics["noise_ceiling"]
    assert ceiling["target"] == ("average" if mode == "cross_subject" else "subject")
    # planted: unit shared and unit noise variance -> rho = 1/2 on signal voxels
    expected = np.sqrt(3 * 0.5 / (1 + 2 * 0.5)) if mode == "cross_subject" else np.sqrt(0.5)
    assert maps["ceiling"][SIGNAL].mean() == pytest.approx(expected, abs=0.12)
    assert list(metrics["by_run"]) == ["1"]
    assert ("by_subject" in metrics) == (mode == "per_subject")

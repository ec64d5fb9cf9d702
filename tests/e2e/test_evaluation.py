"""Evaluation, lesions, the report and run comparison, end to end on the demo, checked
against the demo's planted ground truth (visual voxels read video features, auditory
voxels audio features, language voxels the scene annotations)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tests.e2e.conftest import kedro, ran_nodes

pytestmark = pytest.mark.slow


def _json(project, pattern):
    return json.loads(next(project.glob(pattern)).read_text())


def test_demo_evaluation_and_lesions_recover_the_planted_regions(project):
    result = kedro(project, "run", "--pipelines=report")
    assert {"predict_test_trs", "fit_ridge_reference", "score_evaluation", "run_lesions", "write_report"} <= \
        ran_nodes(result)
    metrics = _json(project, "data/07_model_output/evaluate/*/evaluation_metrics.json")
    truth = np.load(next(project.glob("data/01_raw/demo/*/ground_truth.npz")))
    stats = np.load(next(project.glob("data/03_primary/fmri_stats/*/norm_stats.npz")))
    region = truth["region_labels"][stats["mask"]]

    # 1. held-out r reaches at least half the noise ceiling, on the voxels that are
    #    reliable (selected on val rows); those are the planted responsive voxels
    model = metrics["autoencoder"]
    assert model["r_over_ceiling"] >= 0.5, model
    maps = np.load(next(project.glob("data/07_model_output/evaluate/*/evaluation_maps.npz")))
    assert np.isin(region[maps["reliable"]], [1, 2, 3]).mean() > 0.9
    for code in (1, 2, 3):  # every planted region is predicted, unresponsive brain is not
        assert maps["r_model"][region == code].mean() > 0.3, code
    assert abs(maps["r_model"][region == 4].mean()) < 0.1
    assert model["share_significant"] > 0.1

    # 2. the autoencoder is no worse than the ridge reference (bootstrap interval over TRs)
    assert metrics["comparison"]["verdict"] in ("better", "no different"), metrics["comparison"]
    assert metrics["ridge"]["delays_trs"] in ([0], [0, 1, 2])

    # the r map is a NIfTI in the runs' space holding the per-voxel r
    image = nib.load(next(project.glob("data/07_model_output/evaluate/*/voxel_r_map.nii.gz")))
    assert image.shape == tuple(stats["mask"].shape)
    np.testing.assert_allclose(image.affine, stats["affine"])
    np.testing.assert_allclose(np.asarray(image.dataobj)[stats["mask"]], maps["r_model"], atol=1e-6)

    # reconstruction from the stimulus beats chance for every modality; its normalized
    # loss is the mean squared error of the saved predictions (model units), by hand
    recon = metrics["reconstruction"]
    saved = np.load(next(project.glob("data/07_model_output/evaluate/*/model_test_predictions.npz")))
    for name in ("video", "text"):
        error = (saved[name][saved[f"{name}_valid"]] - saved[f"{name}_target"][saved[f"{name}_valid"]]) ** 2
        assert recon[name]["normalized_loss"] == pytest.approx(float(error.mean()), rel=1e-4)
    assert recon["video"]["sample_r_mean"] > 0.5 and recon["video"]["psnr_db_mean"] > 15
    assert recon["audio"]["code_accuracy"] > recon["audio"]["majority_code_accuracy"]
    assert recon["text"]["top5_retrieval"] > recon["text"]["top5_chance"]

    # 3. lesions: each planted region hurts its own modality most, beyond random regions
    lesions = _json(project, "data/07_model_output/lesion/*/lesion_metrics.json")
    for name, modality in (("visual", "video"), ("auditory", "audio"), ("language", "text")):
        entry = lesions["regions"][name]
        others = [m for m in entry["loss_increase"] if m != modality]
        assert all(entry["loss_increase"][modality] > entry["loss_increase"][m] for m in others), (name, entry)
        assert entry["exceeds_random"][modality], (name, entry["specificity"], entry["random_specificity_max"])
    from scipy.io import wavfile

    wavs = {p.stem: wavfile.read(p) for p in project.glob("data/07_model_output/lesion/*/audio/*.wav")}
    assert set(wavs) == {"true", "intact", "lesion_visual", "lesion_auditory", "lesion_language"}
    rate, true = wavs["true"]
    assert rate == 24000 and len(true) == 20 * 112 * 320  # 20 test TRs of 112 code frames
    assert true.std() > 0 and not np.array_equal(true, wavs["lesion_auditory"][1])
    decoded_text = next(project.glob("data/07_model_output/lesion/*/decoded_text.md")).read_text()
    assert "| TR |" in decoded_text and "lesion visual" in decoded_text

    # 4. pictures and the report
    for name in ("r_map.png", "reconstruction_frames.png", "lesions.png", "lesion_frames.png"):
        assert next(project.glob(f"data/08_reporting/report/*/{name}")).read_bytes()[:4] == b"\x89PNG"
    report = next(project.glob("data/08_reporting/report/*/report.html")).read_text()
    assert report.count("data:image/png;base64,") == 5 and "Training verification" in report

    # nothing recomputes on a rerun; the run history lists both runs and compares them
    assert ran_nodes(kedro(project, "run", "--pipelines=report")) == set()
    listing = kedro(project, "giblet", "runs").stdout
    assert listing.count("demo ") >= 2 and "eval.mean_r=" in listing
    compared = kedro(project, "giblet", "compare", "demo~1", "demo~0").stdout
    assert "spec keys that differ: none" in compared and "eval.r_over_ceiling" in compared


def test_held_out_run_is_evaluated_and_lesion_needs_a_section(project):
    """The two-run demo tests on its whole second run; it has no lesion section, so
    --pipelines=lesion is refused before any node runs."""
    kedro(project, "run", "--pipelines=evaluate", "--params", "experiment=demo_runs")
    metrics = _json(project, "data/07_model_output/evaluate/*/evaluation_metrics.json")
    assert list(metrics["by_run"]) == ["2"] and metrics["by_run"]["2"]["test_trs"] == 180
    assert metrics["autoencoder"]["mean_r"] > 0.1
    refused = kedro(project, "run", "--pipelines=lesion", "--params", "experiment=demo_runs", expect=2)
    assert "needs a 'lesion' section" in refused.stderr and ran_nodes(refused) == set()

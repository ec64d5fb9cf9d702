"""Evaluation, lesions, the report and run comparison, end to end on the demo, checked
against the demo's planted ground truth (visual voxels read video features, auditory
voxels audio features, language voxels the scene annotations; Glover's HRF, volumes at
the middle of their TR)."""

from __future__ import annotations

import importlib.util
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO
from tests.e2e.conftest import kedro, ran_nodes

pytestmark = pytest.mark.slow
CI_RANDOM_REGIONS = 200  # the demo's default is 1,000; 200 keep CI short and p reaches 1/201


def run_notebook(project) -> None:
    """Execute notebooks/explore_experiment.ipynb in ``project`` (its own kernel, as Jupyter)."""
    import nbformat
    from nbclient import NotebookClient

    folder = project / "notebooks"
    folder.mkdir(exist_ok=True)
    notebook = nbformat.read(REPO / "notebooks" / "explore_experiment.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "voxels in a" in outputs and "mean r" in outputs


def _json(project, pattern):
    return json.loads(next(project.glob(pattern)).read_text())


def _npz(project, pattern):
    with np.load(next(project.glob(pattern))) as archive:
        return {key: archive[key] for key in archive.files}


# The whole demo workflow once (training, evaluation, lesions, report, notebook, then four
# predict runs on the trained model): longer than the suite's 10-minute default.
@pytest.mark.timeout(1800)
def test_demo_evaluation_and_lesions_recover_the_planted_regions(project):
    spec = project / "conf/base/experiments/demo.yml"
    spec.write_text(spec.read_text().replace("  method: zero\n", f"  method: zero\n  random_regions: {CI_RANDOM_REGIONS}\n"))
    result = kedro(project, "run", "--pipelines=report")
    assert {"predict_test_trs", "fit_ridge_reference", "score_voxels", "run_lesions", "write_report"} <= \
        ran_nodes(result)
    metrics = _json(project, "data/07_model_output/evaluate/*/evaluation_metrics.json")
    truth = _npz(project, "data/01_raw/demo/*/ground_truth.npz")
    stats = _npz(project, "data/03_primary/fmri_stats/*/norm_stats.npz")
    region = truth["region_labels"][stats["mask"]]
    maps = _npz(project, "data/07_model_output/evaluate/*/evaluation_maps.npz")

    # 1. held-out r reaches at least half the noise ceiling on the voxels reliable on val
    #    rows; those are the planted responsive voxels; every planted region is predicted
    model = metrics["autoencoder"]
    assert model["r_over_ceiling"] >= 0.5, model
    assert np.isin(region[maps["reliable"]], [1, 2, 3]).mean() > 0.85
    for code in (1, 2, 3):
        assert maps["r_model"][region == code].mean() > 0.3, code
        assert maps["significant"][region == code].mean() > 5 * max(maps["significant"][region == 4].mean(), 0.01)
    assert abs(maps["r_model"][region == 4].mean()) < 0.15
    # each voxel against its own (phase) null; the 45 test TRs would allow 36 shifts
    assert metrics["null"]["distinct_null_values"] == "continuous"
    assert metrics["null"]["test_split_allows"]["circular_shifts"] == 36
    assert maps["p_model"].min() == pytest.approx(1 / 1001)

    # 2. the ridge reference, compared with a bootstrap interval
    comparison = metrics["comparison"]
    assert comparison["ci95"][0] <= comparison["difference"] <= comparison["ci95"][1]
    assert comparison["autoencoder_mean_r"] > 0.7 * comparison["ridge_mean_r"]
    assert metrics["ridge"]["delays_trs"] in ([0], [0, 1, 2])

    # the r map is a NIfTI in the runs' space holding the per-voxel r
    image = nib.load(next(project.glob("data/07_model_output/evaluate/*/voxel_r_map.nii.gz")))
    assert image.shape == tuple(stats["mask"].shape)
    np.testing.assert_allclose(image.affine, stats["affine"])
    np.testing.assert_allclose(np.asarray(image.dataobj)[stats["mask"]], maps["r_model"], atol=1e-6)

    # reconstruction beats chance; its loss is each feature's squared error over that
    # feature's training variance, computed here with numpy from the saved predictions
    recon = metrics["reconstruction"]
    saved = _npz(project, "data/07_model_output/evaluate/*/model_test_predictions.npz")
    loss_stats = _npz(project, "data/06_models/train/*/loss_stats.npz")
    for name in ("video", "text"):
        valid = saved[f"{name}_valid"]
        informative = np.broadcast_to(loss_stats[f"{name}_std"] > 0, saved[name][valid].shape)
        error = (saved[name][valid] - saved[f"{name}_target"][valid]) ** 2
        assert recon[name]["normalized_loss"] == pytest.approx(float(error[informative].mean()), rel=1e-4)
    assert recon["video"]["normalized_loss"] < 1 and recon["video"]["sample_r_mean"] > 0.2
    assert recon["audio"]["code_accuracy"] > recon["audio"]["majority_code_accuracy"]
    assert recon["text"]["top5_retrieval"] > recon["text"]["top5_chance"]

    # 3. lesions of the voxel layer: each region's own modality, and only it, is hurt
    #    beyond every random region of its size (permutation p, FDR across all)
    lesions = _json(project, "data/07_model_output/lesion/*/lesion_metrics.json")
    assert lesions["layout"].startswith("voxels") and lesions["source"] == "model"
    for name, modality in (("visual", "video"), ("auditory", "audio"), ("language", "text")):
        effects = lesions["regions"][name]["effects"]
        own = effects[modality]
        assert own["p"] == pytest.approx(1 / (CI_RANDOM_REGIONS + 1)) and own["fdr_significant"], (name, own)
        assert own["ci95"][0] > 0 and lesions["regions"][name]["most_affected"] == modality
        assert not any(e["fdr_significant"] for m, e in effects.items() if m != modality), (name, effects)
    from scipy.io import wavfile

    wavs = {p.stem: wavfile.read(p) for p in project.glob("data/07_model_output/lesion/*/audio/*.wav")}
    assert set(wavs) == {"true", "intact", *(f"{kind}_{name}" for kind in ("lesion", "only")
                                            for name in ("visual", "auditory", "language"))}
    rate, true = wavs["true"]
    assert rate == 24000 and len(true) == 45 * 112 * 320  # 45 test TRs of 112 code frames
    assert true.std() > 0 and not np.array_equal(true, wavs["lesion_auditory"][1])
    decoded_text = next(project.glob("data/07_model_output/lesion/*/decoded_text.md")).read_text()
    assert "| TR |" in decoded_text and "lesion visual" in decoded_text and "visual alone" in decoded_text

    # what a region sees: decoded from the region alone, each keeps its own modality and
    # loses the others (normalized loss, 1 = the training mean)
    alone = {name: lesions["regions"][name]["alone"] for name in ("visual", "auditory", "language")}
    for name, modality in (("visual", "video"), ("auditory", "audio"), ("language", "text")):
        own = alone[name][modality]["normalized_loss"]
        assert all(own < alone[other][modality]["normalized_loss"] for other in alone if other != name), \
            (name, modality, alone)
    # (when written: frame r 0.27 from the visual region alone, -0.03 and 0.01 from the others)
    assert alone["visual"]["video"]["sample_r_mean"] > 0.15 + max(alone[other]["video"]["sample_r_mean"]
                                                                  for other in ("auditory", "language")), alone
    assert alone["visual"]["audio"]["normalized_loss"] > alone["auditory"]["audio"]["normalized_loss"], alone

    # 4. timing: the pipeline's HRF-convolved video lines up with the planted response at
    #    lag 0 (the TR-sampled kernel made every feature one TR late), and the planted
    #    HRF's lag is recovered from the measured fMRI within half a TR
    features = np.load(next(project.glob("data/05_model_input/video_features/*/video_features/values.npy")))
    brightness = features.mean(axis=(1, 2, 3, 4))  # flashes wash the whole frame
    flash_response = truth["fast_responses"][:, list(truth["fast_features"]).index("flash")]
    by_lag = {lag: np.corrcoef(np.roll(brightness, lag)[12:-12], flash_response[12:-12])[0, 1] for lag in range(-2, 3)}
    assert max(by_lag, key=by_lag.get) == 0, by_lag
    fmri = np.load(next(project.glob("data/05_model_input/fmri_tensor/*/fmri_train.npy")))
    train = _json(project, "data/06_models/train/*/train_job.json")["train_rows"]
    flash = truth["features_tr"][:, list(truth["feature_names"]).index("flash")]
    lags = np.arange(9)
    design = np.stack([np.roll(flash, k) for k in lags], axis=1)[train][10:]
    response = fmri[train][10:][:, region == 1]
    fir = np.linalg.lstsq(np.c_[design, np.ones(len(design))], response, rcond=None)[0][:-1].mean(1)
    peak = int(np.argmax(fir))
    a, b, c = fir[peak - 1], fir[peak], fir[peak + 1]
    estimated = peak + 0.5 * (a - c) / (a - 2 * b + c)  # parabola through the peak and its neighbours
    planted = float(truth["hrf_peak_s"]) / 1.5  # window centre to volume centre, in TRs
    assert abs(estimated - planted) <= 0.5, (estimated, planted)

    # 5. pictures and the report
    for name in ("r_map.png", "reconstruction_frames.png", "lesions.png", "lesion_frames.png"):
        assert next(project.glob(f"data/08_reporting/report/*/{name}")).read_bytes()[:4] == b"\x89PNG"
    report = next(project.glob("data/08_reporting/report/*/report.html")).read_text()
    assert report.count("data:image/png;base64,") == 5 and "Training verification" in report
    assert "permutation" in report and "voxel layer" in report and "What each region sees" in report

    # nothing recomputes on a rerun; the run history lists both runs and compares them
    assert ran_nodes(kedro(project, "run", "--pipelines=report")) == set()
    listing = kedro(project, "giblet", "runs").stdout
    assert listing.count("demo ") >= 2 and "eval.mean_r=" in listing
    compared = kedro(project, "giblet", "compare", "demo~1", "demo~0").stdout
    assert "spec keys that differ: none" in compared and "eval.r_over_ceiling" in compared
    assert "RANDOM weights" in report  # the demo's extractors are random, and the report says so

    # 6. the MLflow run of the report (the `mlflow` extra): losses per epoch, metrics, artifacts
    if importlib.util.find_spec("kedro_mlflow") is not None:
        from tests.e2e.test_tracking import runs_in

        client, runs = runs_in(project)
        run = runs[0]  # the first report run computed everything
        assert len(client.get_metric_history(run.info.run_id, "train.total")) == 40
        assert run.data.metrics["verify.the stimulus drives the brain"] == 1.0
        assert run.data.metrics["eval.r_over_ceiling"] == pytest.approx(metrics["autoencoder"]["r_over_ceiling"])
        assert "lesion.visual.video.p" in run.data.metrics
        artifacts = {a.path for folder in ("report", "evaluate") for a in client.list_artifacts(run.info.run_id, folder)}
        assert {"report/report.html", "evaluate/voxel_r_map.nii.gz"} <= artifacts

    # 7. the worked notebook, executed as a user would open it, on this project
    run_notebook(project)
    first_tr = nib.load(project / "data/08_reporting/first_tr.nii.gz")
    mask = _npz(project, "data/03_primary/fmri_stats/*/norm_stats.npz")["mask"].astype(bool)
    tensor = np.load(next(project.glob("data/05_model_input/fmri_tensor/*/fmri_train.npy")))
    np.testing.assert_array_equal(first_tr.get_fdata(dtype=np.float32)[mask], tensor[0])
    assert not first_tr.get_fdata()[~mask].any()
    assert (project / "data/08_reporting/notebook_r_map.png").read_bytes()[:4] == b"\x89PNG"

    # 8. in silico, on the trained model: a movie it never saw, then the training movie
    check_predictions(project, truth, stats, region)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0) + 1e-12)


def check_predictions(project, truth, stats, region) -> None:
    """``--pipelines=predict`` on the demo's held-out movie (never seen in training):
    the prediction follows the planted response, each region depends on its planted
    modality, sub-01's held-out run is scored on every TR; then on the training movie,
    where it reproduces the evaluation's prediction and only test TRs are scored; and
    bad input is refused with nothing written."""
    result = kedro(project, "run", "--pipelines=predict")
    assert ran_nodes(result) == {"extract_new_stimulus", "predict_response", "region_timecourses",
                                 "score_heldout_runs", "modality_timing_test"}
    folder = next(project.glob("data/07_model_output/predict/*/"))
    arrays = _npz(project, "data/07_model_output/predict/*/predicted_voxels.npz")
    planted = truth["heldout_shared_response"]
    assert arrays["zscored"].shape == planted.shape == (150, int(stats["mask"].sum()))
    r = _pearson(arrays["zscored"], planted)
    for code in (1, 2, 3):  # the planted regions: 0.67, 0.29, 0.90 when written
        assert r[region == code].mean() > (0.15 if code == 2 else 0.5), (code, r[region == code].mean())
    image = nib.load(folder / "predicted_bold.nii.gz")
    assert image.shape == (*stats["mask"].shape, 150) and image.header.get_zooms()[3] == pytest.approx(1.5)
    np.testing.assert_allclose(np.asarray(image.dataobj)[stats["mask"]].T, arrays["zscored"], atol=1e-6)

    # ablation: visual voxels lean on video, language voxels on the scene text
    effect = {m: arrays[f"ablation_{m}"] for m in arrays["ablation_modalities"]}
    assert np.median(effect["video"][region == 1]) > 2 * np.median(effect["audio"][region == 1])
    assert np.median(effect["text"][region == 3]) > 2 * np.median(effect["video"][region == 3])
    maps = nib.load(folder / "ablation_maps.nii.gz")
    np.testing.assert_allclose(np.asarray(maps.dataobj)[stats["mask"]][:, 0], effect["video"], atol=1e-6)

    # the region time courses are the regions' means of the predicted voxels
    courses = pd.read_csv(folder / "region_timecourses.csv")
    assert list(courses.columns) == ["tr", "time_s", "visual", "auditory", "language"]
    np.testing.assert_allclose(courses["visual"], arrays["zscored"][:, region == 1].mean(1), atol=1e-5)
    assert (folder / "prediction.png").read_bytes()[:4] == b"\x89PNG"

    # sub-01's held-out run watched this movie: every TR is scored
    scores = json.loads((folder / "heldout_scores.json").read_text())
    assert not scores["training_movie"] and len(scores["rows"]) == 150
    assert scores["runs"]["01"]["mean_r"] > 0.1
    heldout = next(project.glob("data/05_model_input/fmri_heldout/*/fmri_heldout.safetensors"))
    from safetensors.numpy import load_file

    measured = load_file(heldout)["subject_01"]
    assert scores["runs"]["01"]["mean_r"] == pytest.approx(float(_pearson(arrays["model_units"], measured).mean()),
                                                           abs=1e-5)
    timing = json.loads((folder / "modality_timing_tests.json").read_text())
    p_maps = np.asarray(nib.load(folder / "modality_p_maps.nii.gz").dataobj)[stats["mask"]]
    # 150 TRs allow 141 circular shifts of at least 5 TRs (evaluate.min_shift_trs)
    assert timing["shifts"] == 141 and np.nanmin(p_maps) == pytest.approx(1 / 142)
    # each planted region follows its own modality's timing far more often than unresponsive
    # voxels do (when written: video 0.97 of visual voxels, text 1.0 of language voxels,
    # audio 0.26 of auditory voxels; 0.03 to 0.10 of unresponsive voxels)
    modalities = list(arrays["ablation_modalities"])
    for code, modality, factor in ((1, "video", 5), (3, "text", 5), (2, "audio", 2)):
        p = p_maps[:, modalities.index(modality)]
        assert (p[region == code] < 0.05).mean() > factor * max((p[region == 4] < 0.05).mean(), 0.02), modality

    # the training movie: the evaluation's prediction on its test TRs, and only those are scored
    demo = next(project.glob("data/01_raw/demo/*/"))
    result = kedro(project, "run", "--pipelines=predict", "--params",
                   f"predict.stimulus={demo / 'movie.mp4'},predict.annotations={demo / 'annotations.xlsx'}")
    assert "train_model" not in ran_nodes(result)
    again = sorted(project.glob("data/07_model_output/predict/*/predicted_voxels.npz"), key=lambda f: f.stat().st_mtime)
    training = dict(np.load(again[-1]))
    saved = _npz(project, "data/07_model_output/evaluate/*/model_test_predictions.npz")
    rows = saved["rows"]
    covered = np.logical_and.reduce([saved[f"{m}_valid"] for m in ("video", "audio", "text")])
    np.testing.assert_allclose(training["model_units"][rows][covered], saved["fmri"][covered], atol=2e-4)
    scores = json.loads((again[-1].parent / "heldout_scores.json").read_text())
    assert scores["training_movie"] and scores["rows"] == rows.tolist()

    # bad input: one message each, nothing of the stage written
    def stage_files() -> list:
        found = [*project.glob("data/07_model_output/predict/*/*"), *project.glob("data/04_feature/predict_stimulus/*/*")]
        return sorted(f for f in found if not f.name.startswith("."))  # the runner's lock files aside

    written = stage_files()
    from giblet_kedro.datasets.movie import Movie, MovieDataset

    MovieDataset(str(project / "short.mp4")).save(Movie(frames=np.zeros((8, 36, 64, 3), np.uint8), fps=8,
                                                        audio=np.zeros(24000, np.float32), sample_rate=24000))
    refused = kedro(project, "run", "--pipelines=predict", "--params", f"predict.stimulus={project / 'short.mp4'}",
                    expect=2)
    assert "predict.stimulus: the movie lasts 1.000 s, less than one TR (1.5 s)" in refused.stdout + refused.stderr
    refused = kedro(project, "run", "--pipelines=predict", "--params",
                    f"predict.stimulus={demo / 'movie.mp4'},predict.annotations=null", expect=2)
    message = refused.stdout + refused.stderr
    assert "the model reads ['text'], which the new stimulus does not give" in message
    assert "add ['text'] to predict.ablate" in message
    assert stage_files() == written


def test_a_demo_whose_stimulus_comes_from_another_seed_fails_verification(project):
    """The demo's fMRI with another demo's movie and annotations: every training check
    passes except the one that exists for this mistake, which says why."""
    base = (project / "conf/base/experiments/demo.yml").read_text()
    (project / "other.yml").write_text(base.replace("name: demo", "name: other").replace("  seed: 0\n", "  seed: 1\n"))
    kedro(project, "run", "--pipelines=demo_data", "--params", "experiment=other.yml")
    demo_folders = sorted(project.glob("data/01_raw/demo/*"))
    assert len(demo_folders) == 1
    other = demo_folders[0]
    mismatched = base.replace("name: demo", "name: mismatch")
    for file in ("movie.mp4", "annotations.xlsx"):
        mismatched = mismatched.replace(f'"{{demo}}/{file}"', f'"{other / file}"')
    (project / "mismatch.yml").write_text(mismatched)
    kedro(project, "run", "--pipelines=train", "--params", "experiment=mismatch.yml")
    report = _json(project, "data/08_reporting/verify/*/verification_report.json")
    failed = [c for c in report["checks"] if not c["pass"]]
    assert not report["passed"] and [c["check"] for c in failed] == ["the stimulus drives the brain"], failed
    assert "circularly shifted" in failed[0]["reason"] and failed[0]["observed"]["p"] > 0.05


def test_held_out_run_is_evaluated_and_lesion_needs_a_section(project):
    """The two-run demo (the latent layout) tests on its whole second run; it has no
    lesion section, so --pipelines=lesion is refused before any node runs."""
    kedro(project, "run", "--pipelines=evaluate", "--params", "experiment=demo_runs")
    metrics = _json(project, "data/07_model_output/evaluate/*/evaluation_metrics.json")
    assert list(metrics["by_run"]) == ["2"] and metrics["by_run"]["2"]["test_trs"] == 180
    assert metrics["autoencoder"]["mean_r"] > 0.05
    refused = kedro(project, "run", "--pipelines=lesion", "--params", "experiment=demo_runs", expect=2)
    assert "needs a 'lesion' section" in refused.stderr and ran_nodes(refused) == set()

"""Each stage's ``create_pipeline()`` on an in-memory ``DataCatalog`` with Kedro's
``SequentialRunner``, as Kedro's spaceflights starter tests its pipelines: small inputs,
no configuration, no hooks, no project. What a stage writes is compared with an
independent computation (nibabel and numpy by hand, the planted truth).

Raw inputs that a node reads from disk by design (NIfTI runs are streamed from their
files, a movie is decoded from its file) are small files in ``tmp_path``; everything a
node hands to the next stays in memory.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from giblet_kedro.datasets.nifti import NiftiRunsDataset
from giblet_kedro.fmri.partials import Partitions
from giblet_kedro.spec.schema import DemoSpec, FmriSpec, StimulusSpec
from tests.conftest import REPO, random_runs, write_run


class Kept(MemoryDataset):
    """A ``MemoryDataset`` the runner does not release once its readers ran, so the test
    can look at every intermediate output, not only the pipeline's free outputs."""

    def __init__(self, data=None):
        super().__init__(data=data, copy_mode="assign")

    def _release(self) -> None:
        pass


def catalog_entry(name: str, **location):
    """The dataset ``conf/base/catalog.yml`` declares for ``name``, at ``location`` (its
    ``filepath``, ``paths`` or ``folder``) instead of the experiment's cache folder."""
    import importlib

    entry = yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())[name]
    module, _, cls = entry.pop("type").rpartition(".")
    settings = {key: value for key, value in entry.items() if key not in ("metadata", "validator", *location)}
    return getattr(importlib.import_module(module), cls)(**settings, **location)


def run_in_memory(pipeline: Pipeline, **inputs) -> dict:
    """Run ``pipeline`` on a catalog of ``inputs`` (``params:`` keys spelt ``params__``);
    returns every dataset of the pipeline, loaded."""
    named = {name.replace("params__", "params:"): value for name, value in inputs.items()}
    catalog = DataCatalog({name: Kept(named.get(name)) for name in pipeline.datasets()})
    missing = pipeline.inputs() - set(named)
    assert not missing, f"the test gives no {sorted(missing)}"
    SequentialRunner().run(pipeline, catalog)
    return {name: catalog.load(name) for name in pipeline.datasets() if catalog.exists(name)}


# ----------------------------------------------------------------------------- fMRI
@pytest.mark.parametrize(("group", "keep"), [(2, True), (3, False)])
def test_the_fmri_pipeline_z_scores_each_subject_then_averages(tmp_path, rng, group, keep):
    """Three subjects, map-reduce partitions (groups of 2 or 3, the first pass's voxels kept
    for the second or not): the tensor is numpy's z-score of each subject over its
    training TRs (nibabel's full read), averaged; the held-out run is z-scored with its
    subject's training stats."""
    from giblet_kedro.pipelines.fmri.pipeline import create_pipeline
    from tests.pipelines.test_fmri_nodes import by_hand

    data = random_runs(rng, 4, grid=(6, 5, 4), n_trs=50)
    paths = {f"{i:02d}": str(write_run(tmp_path / f"sub-{i:02d}.nii.gz", d)) for i, d in enumerate(data[:3], 1)}
    heldout = str(write_run(tmp_path / "sub-01_heldout.nii.gz", data[3]))
    fmri = FmriSpec(subjects=paths, tr=1.5, heldout={"01": heldout}, chunk_trs=7, subjects_per_group=group,
                    keep_decompressed=keep, split={"val": 0.1, "test": 0.1, "gap_trs": 0})
    pipeline = create_pipeline(partitions=Partitions(tuple(fmri.run_keys), group, keep))
    out = run_in_memory(pipeline, fmri_raw=NiftiRunsDataset(fmri.run_files).load(), fmri_mask_input={},
                        fmri_confounds={}, fmri_heldout_raw=NiftiRunsDataset(dict(fmri.heldout)).load(),
                        fmri_heldout_confounds={}, params__fmri=fmri)

    split = out["fmri_split"]
    n_train = int((split["split"] == "train").sum())
    assert n_train == 40 and list(split["split"].iloc[[39, 40, 45]]) == ["train", "val", "test"]
    mask, stats, z = by_hand(paths, (0, 50), n_train, ddof=1)
    np.testing.assert_array_equal(out["fmri_norm_stats"]["mask"], mask)
    np.testing.assert_allclose(out["fmri_train"], np.mean(list(z.values()), axis=0), atol=2e-5)
    assert out["fmri_train_valid"].all()
    mean, std = stats["01"]
    held = nib_voxels(heldout, mask)
    np.testing.assert_allclose(out["fmri_heldout_normalized"]["subject_01"], (held - mean) / std, atol=2e-5)
    assert list(out["fmri_subjects"]["subject_id"]) == ["01", "02", "03"]


def nib_voxels(path: str, mask: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return nib.load(path).get_fdata()[mask].T


# ------------------------------------------------------------------------- stimulus
def test_the_stimulus_pipeline_aligns_each_modality_to_the_trs_then_applies_the_hrf(tmp_path):
    """A movie whose frame k shows grey level ``level(k)`` at 4 frames per TR, and a feature
    array at one sample per TR: each TR's frames are that TR's (the grey levels by hand),
    the feature is convolved with nilearn's HRF integrated over TR windows (by hand), and
    the modalities the spec leaves out are absent from what training reads."""
    from giblet_kedro.fmri.split import split_table
    from giblet_kedro.pipelines.stimulus.pipeline import create_pipeline
    from giblet_kedro.stimulus.hrf import hrf_kernel
    from tests.stimulus.conftest import level, write_movie
    from tests.stimulus.test_hrf import integrated_by_hand

    n_trs, fps = 20, 4
    movie = write_movie(tmp_path / "movie.mkv", [k / (fps / 1.5) for k in range(n_trs * fps + 1)])  # + the end
    values = np.zeros((n_trs, 1), np.float32)
    values[5] = 1.0
    np.save(tmp_path / "feature.npy", values)
    stimulus = StimulusSpec(video={"path": str(movie), "size": [32, 16], "frames_per_tr": fps},
                            features={"pulse": {"path": str(tmp_path / "feature.npy"), "rate_hz": 1 / 1.5}},
                            hrf={"kind": "glover"})
    fmri = FmriSpec(subjects={"01": str(tmp_path / "unused.nii.gz")}, tr=1.5)
    split = split_table(0, n_trs, 1.5, 0.2, 0.2)
    out = run_in_memory(create_pipeline(), fmri_split=split, params__fmri=fmri, params__stimulus=stimulus,
                        params__experiment_info={"name": "tiny", "seed": 0, "spec_file": "tiny.yml"})

    frames = out["video_frames_tr"].values  # (n_trs, frames, 3, H, W)
    assert frames.shape == (n_trs, fps, 3, 16, 32) and out["video_frames_tr"].valid.all()
    grey = frames.astype(np.float64).mean(axis=(2, 3, 4))
    expected = np.array([[level(t * fps + f) for f in range(fps)] for t in range(n_trs)], dtype=np.float64)
    np.testing.assert_allclose(grey, expected, atol=6)  # lossy coding moves a level by a few units
    kernel = integrated_by_hand("glover", 1.5, 0.5, hrf_kernel("glover", 1.5, 0.5).size)  # only its length
    convolved = out["stimulus_features"].values[:, 0]
    np.testing.assert_allclose(convolved[5:], kernel[:n_trs - 5], atol=4e-3)  # the pulse at TR 5, unit height
    assert not convolved[:5].any()
    assert set(out["stimulus_modalities"]) >= {"video", "features"}
    assert out["stimulus_modalities"]["audio"].meta.get("absent") and out["stimulus_alignment"]["modalities"]


# -------------------------------------------------------------------------- demo data
def test_the_demo_pipeline_plants_its_response_in_every_subject(tmp_path):
    """The demo generator in memory, at a small size: each subject's responsive voxels
    follow the planted shared response (numpy on the returned images), the unresponsive
    ones do not, and the atlas it returns is the planted layout."""
    from giblet_kedro.pipelines.demo_data.pipeline import create_pipeline

    demo = DemoSpec(n_trs=60, grid=(8, 8, 6), frame_size=(32, 18), fps=4, noise=0.5, seed=3)
    fmri = FmriSpec(subjects={"pattern": "{demo}/sub-{id}_bold.nii.gz", "ids": ["01", "02"]}, tr=1.5)
    out = run_in_memory(create_pipeline(), params__demo=demo, params__fmri=fmri,
                        params__experiment_info={"name": "tiny", "seed": 0, "spec_file": "tiny.yml"})
    truth, regions = out["demo_ground_truth"], out["demo_regions"]
    labels = np.asarray(regions.dataobj)
    np.testing.assert_array_equal(labels, truth["region_labels"])
    brain = labels > 0
    region = labels[brain]
    response = truth["shared_response"]
    visual = response[:, region == 1].mean(axis=1)
    for key, image in out["fmri_raw"].items():
        data = np.asarray(image.dataobj, dtype=np.float64)[brain].T  # (n_trs, voxels)
        assert data.shape == (60, int(brain.sum())), key
        r = np.array([np.corrcoef(data[:, v], response[:, v])[0, 1] for v in np.flatnonzero(region < 4)])
        assert np.median(r) > 0.5, key  # each responsive voxel follows its planted response
        silent = [np.corrcoef(data[:, v], visual)[0, 1] for v in np.flatnonzero(region == 4)]
        assert np.median(np.abs(silent)) < 0.3, key  # unresponsive voxels carry none of it
    assert out["demo_movie"].frames.shape == (60 * 1.5 * 4, 18, 32, 3)
    assert isinstance(out["demo_annotations"], pd.DataFrame) and len(out["demo_annotations"]) > 0


# -------------------------------------------------------------- the whole workflow
@pytest.mark.trains
def test_the_whole_workflow_runs_on_a_catalog_of_a_few_files(tmp_path):
    """Demo data -> fMRI -> stimulus -> training -> verification -> evaluation -> lesions ->
    report, and in silico on the held-out movie, every stage's ``create_pipeline()`` summed
    and run by ``SequentialRunner``.
    Files only where a node hands a path on by design (the raw runs and movie it streams,
    the memory-mapped caches the training ranks open); the rest stays in memory. The
    evaluation's r map holds each voxel's r of the saved prediction against the measured
    test rows (numpy here)."""
    from giblet_kedro.pipelines import demo_data, evaluate, fmri, lesion, predict, report, stimulus, train
    from giblet_kedro.spec.schema import (
        EvaluateSpec,
        LesionSpec,
        LossSpec,
        ModelSpec,
        PredictSpec,
        TrainingSettings,
        TrainSpec,
        VerifySpec,
    )

    raw = tmp_path / "raw"
    fmri_spec = FmriSpec(subjects={sid: str(raw / f"sub-{sid}_bold.nii.gz") for sid in ("01", "02", "03")},
                         heldout={"01": str(raw / "sub-01_heldout_bold.nii.gz")}, tr=1.5,
                         split={"val": 0.15, "test": 0.15})
    regions = str(raw / "regions.nii.gz")
    specs = {
        "demo": DemoSpec(n_trs=80, grid=(8, 8, 6), frame_size=(32, 18), fps=4, noise=0.5, seed=0),
        "fmri": fmri_spec,
        "stimulus": StimulusSpec(video={"path": str(raw / "movie.mp4"), "size": [32, 18], "frames_per_tr": 2},
                                 features={"planted": {"path": str(raw / "truth.npz"), "key": "features_tr",
                                                       "rate_hz": 1 / 1.5}}),
        "training": TrainingSettings(model=ModelSpec(rank=8, hidden=16, dropout=0.0), loss=LossSpec(),
                                     train=TrainSpec(epochs=8, batch_size=4, lr=1e-2, warmup_epochs=0,
                                                     precision="fp32", devices=1, seeds=[0, 1]),
                                     seed=0, experiment="tiny", run_dir=str(tmp_path / "run")),
        "verify": VerifySpec(), "evaluate": EvaluateSpec(null_draws=99, ridge={"delay_sets": [[0, 1]]}),
        "lesion": LesionSpec(regions={name: {"atlas": regions, "labels": [code]} for name, code in
                                      (("visual", 1), ("auditory", 2), ("language", 3))},
                             random_regions=19, bootstrap=100),
        "predict": PredictSpec(stimulus=str(raw / "heldout_movie.mp4"), ablate=["features"], permutations=19,
                               regions={"visual": {"atlas": regions, "labels": [1]}}),
        "experiment_info": {"name": "tiny", "seed": 0, "spec_file": str(tmp_path / "tiny.yml")},
        "train_fresh": False,
    }
    files = {name: catalog_entry(name, **location) for name, location in {
        "fmri_raw": {"paths": fmri_spec.run_files}, "fmri_heldout_raw": {"paths": dict(fmri_spec.heldout)},
        "demo_movie": {"filepath": str(raw / "movie.mp4")}, "demo_ground_truth": {"filepath": str(raw / "truth.npz")},
        "demo_regions": {"filepath": regions},
        "lesion_regions": {"paths": {"visual": regions, "auditory": regions, "language": regions}},
        "predict_regions": {"paths": {"visual": regions}},
        "demo_heldout_movie": {"filepath": str(raw / "heldout_movie.mp4")},
        "fmri_train": {"filepath": str(tmp_path / "fmri_train.npy")},
        "fmri_train_valid": {"filepath": str(tmp_path / "fmri_train_valid.npy")},
        **{name: {"filepath": str(tmp_path / name)}  # memory-mapped: the training job hands their paths on
           for name in ("video_frames_tr", "stimulus_features_tr", "video_features", "stimulus_features")},
        "loss_stats": {"filepath": str(tmp_path / "loss_stats.npz")},
        "loss_curve": {"filepath": str(tmp_path / "loss_curve.png")},
        "report_figures": {"folder": str(tmp_path / "report")},
    }.items()}
    partitions = Partitions(tuple(fmri_spec.run_keys), fmri_spec.subjects_per_group, True)
    demo = demo_data.pipeline.create_pipeline()  # first, as the project's hook does (predict reads no node's output)
    workflow = sum((module.pipeline.create_pipeline(partitions=partitions)
                    for module in (fmri, stimulus, train, evaluate, lesion, report, predict)), Pipeline([]))
    pipeline = demo + workflow
    catalog = DataCatalog({**{name: Kept() for name in pipeline.datasets()}, **files})
    for section, value in specs.items():
        catalog[f"params:{section}"] = Kept(value)
    assert pipeline.inputs() <= set(files) | {f"params:{section}" for section in specs} | {
        "fmri_mask_input", "fmri_confounds", "fmri_heldout_confounds"}
    for name in ("fmri_mask_input", "fmri_confounds", "fmri_heldout_confounds"):
        catalog[name] = Kept({})
    SequentialRunner().run(demo, catalog)
    SequentialRunner().run(workflow, catalog)

    # the evaluation reads the selected weights (the best validation r), not the last epoch's
    history = catalog.load("training_history")
    scores = [e["val_fmri_r"] for e in history["epochs"]]
    assert history["selected"]["epoch"] == int(np.argmax(scores)) + 1 < len(scores)  # trained past its best
    import torch

    selected = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    kept = catalog.load("model_checkpoint")
    assert all(torch.equal(kept[k], selected[k]) for k in selected)
    assert not all(torch.equal(kept[k], final[k]) for k in final)
    # train.seeds: the second seed trains in its own folder; the evaluation scores the mean
    # of both models' predictions and reports each one's r
    second = torch.load(tmp_path / "run" / "seed-1" / "best.pt", weights_only=True)["model"]
    others = catalog.load("seed_checkpoints")
    assert list(others) == ["1"] and all(torch.equal(others["1"][k], second[k]) for k in second)
    assert [entry["seed"] for entry in history["seeds"]] == [0, 1]
    checks = {c["check"] for c in catalog.load("verification_report")["checks"]}
    assert {"samples and batches drawn in epoch 1", "the stimulus drives the brain"} <= checks
    saved = catalog.load("model_test_predictions")
    assert saved["seed_fmri"].shape[0] == 2 and saved["seeds"].tolist() == [0, 1]
    assert np.abs(saved["seed_fmri"][0] - saved["seed_fmri"][1]).mean() > 1e-3
    from giblet_kedro.evaluation.model import TrainedModel
    from giblet_kedro.training.job import TrainJob

    job = TrainJob.from_dict(catalog.load("train_job"))
    for index, weights in enumerate((selected, second)):  # each slot is that seed's selected weights
        np.testing.assert_allclose(saved["seed_fmri"][index], TrainedModel.load(job, weights).predict_fmri_rows(
            saved["rows"]), atol=1e-5)
    np.testing.assert_allclose(saved["fmri"], saved["seed_fmri"].mean(0), atol=1e-6)
    assert catalog.load("voxel_scores")["seeds"]["seeds"] == [0, 1]
    measured = np.load(tmp_path / "fmri_train.npy")[saved["rows"]]
    centred = [a - a.mean(0) for a in (saved["fmri"].astype(np.float64), measured.astype(np.float64))]
    r = (centred[0] * centred[1]).sum(0) / np.sqrt((centred[0] ** 2).sum(0) * (centred[1] ** 2).sum(0))
    mask = catalog.load("fmri_norm_stats")["mask"]
    np.testing.assert_allclose(np.asarray(catalog.load("voxel_r_map").dataobj)[mask], r, atol=1e-5)
    assert set(catalog.load("lesion_metrics")["regions"]) == {"visual", "auditory", "language"}
    html = catalog.load("experiment_report")
    assert "Training verification" in html and html.count("data:image/png;base64,") >= 3
    assert "seeds [0, 1]: each model" in html
    # in silico: the held-out movie's predicted 4D response holds the voxel arrays; the
    # region's time course is their mean over the atlas's voxels (numpy here)
    arrays, image = catalog.load("predicted_voxels"), catalog.load("predicted_response")
    np.testing.assert_allclose(np.asarray(image.dataobj)[mask].T, arrays["zscored"], atol=1e-6)
    atlas = np.asarray(catalog.load("demo_regions").dataobj)[mask]
    np.testing.assert_allclose(catalog.load("predicted_timecourses")["visual"],
                               arrays["zscored"][:, atlas == 1].mean(1), atol=1e-5)
    assert catalog.load("heldout_prediction_scores")["runs"]["01"]["trs"] == arrays["zscored"].shape[0]

"""The in-silico nodes on a tiny trained-model stand-in and planted data, against numpy by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from giblet_kedro.errors import InputDataError
from giblet_kedro.models.autoencoder import ModalityShapes, build_model
from giblet_kedro.pipelines.predict.nodes import predict_response, score_heldout_runs
from giblet_kedro.spec.schema import EvaluateSpec, FmriSpec, PredictSpec, StimulusSpec
from giblet_kedro.training.job import ArrayPaths, TrainJob

N_VOXELS, DIM, N_TRS = 12, 5, 30
HISTORY = {"epochs": [{}, {}, {}], "selected": {"epoch": 2, "val_fmri_r": 0.3, "reason": "the best"}}


def perturbed_model(shapes: ModalityShapes, spec: dict, seed: int) -> torch.nn.Module:
    """The model of ``spec`` with seeded noise on every weight (its output layers start
    at zero, which would make every prediction the training mean)."""
    torch.manual_seed(seed)
    model = build_model(shapes, spec, tr=1.5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def tiny_model(tmp_path, rng) -> tuple[dict, dict, dict]:
    """A voxel-layer model reading one 5-wide text modality, with nonzero weights, its
    job (training statistics on disk) and the experiment's mask and affine."""
    shapes = ModalityShapes(None, None, False, (DIM,), N_VOXELS)
    model_spec = {"bottleneck": "voxels", "hidden": 8, "dropout": 0.0, "rank": 4, "context_s": 6.0}
    model = perturbed_model(shapes, model_spec, seed=0)
    np.savez(tmp_path / "loss_stats.npz", modalities=np.array(["fmri", "text"]),
             fmri_mean=rng.normal(size=N_VOXELS), fmri_std=rng.uniform(0.5, 2.0, size=N_VOXELS),
             text_mean=rng.normal(size=DIM), text_std=rng.uniform(0.5, 2.0, size=DIM))
    job = TrainJob(paths=ArrayPaths(fmri="", loss_stats=str(tmp_path / "loss_stats.npz")), train_rows=[], val_rows=[],
                   mode="cross_subject", shapes=shapes, model=model_spec, loss={}, train={}, seed=0,
                   run_dir=str(tmp_path), tr=1.5)
    mask = np.zeros((3, 2, 3), bool)
    mask.reshape(-1)[:N_VOXELS] = True
    stats = {"mask": mask, "affine": np.diag([3.0, 3.0, 3.0, 1.0])}
    return job.to_dict(), model.state_dict(), stats


def test_the_prediction_is_the_voxel_layer_restored_to_z_units(tmp_path, rng):
    job, weights, stats = tiny_model(tmp_path, rng)
    text = rng.normal(size=(N_TRS, DIM)).astype(np.float32)
    features = {"text": text, "text_valid": np.ones(N_TRS, bool), "window_starts_s": 1.5 * np.arange(N_TRS)}
    image, arrays, maps = predict_response(job, weights, {}, HISTORY, stats, features,
                                           PredictSpec(contrast={"a": (0, 15), "b": (15, 45)}))
    loss = np.load(tmp_path / "loss_stats.npz")
    model = build_model(TrainJob.from_dict(job).shapes, job["model"], tr=1.5, dropout=0.0)
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():  # by hand: standardize, encode the movie as one sequence, un-standardize
        standardized = torch.from_numpy((text - loss["text_mean"]) / loss["text_std"]).float()
        layer = model.encode({"text": standardized[None]})[0]
    by_hand = layer.numpy() * loss["fmri_std"] + loss["fmri_mean"]
    np.testing.assert_allclose(arrays["zscored"], by_hand, rtol=1e-4, atol=1e-4)
    assert image.shape == (3, 2, 3, N_TRS) and image.header.get_zooms()[3] == pytest.approx(1.5)
    np.testing.assert_allclose(np.asarray(image.dataobj)[stats["mask"]].T, by_hand, rtol=1e-4, atol=1e-4)
    assert int(arrays["weights_epoch"]) == 2 and str(arrays["weights_reason"]) == "the best"
    # the only modality ablated: the prediction is its training mean, all of it carried by text
    np.testing.assert_allclose(arrays["ablation_text"], 1.0, rtol=1e-5)
    assert maps.shape == (3, 2, 3, 1)
    np.testing.assert_allclose(arrays["contrast_difference"], by_hand[:10].mean(0) - by_hand[10:30].mean(0),
                               rtol=1e-4, atol=1e-5)


def test_a_model_of_another_voxel_set_or_a_missing_modality_is_refused(tmp_path, rng):
    job, weights, stats = tiny_model(tmp_path, rng)
    features = {"text": rng.normal(size=(N_TRS, DIM)), "text_valid": np.ones(N_TRS, bool),
                "window_starts_s": 1.5 * np.arange(N_TRS)}
    bigger = dict(stats, mask=np.ones((3, 2, 3), bool))
    with pytest.raises(InputDataError, match="the trained model has 12 voxels but the experiment's mask has 18"):
        predict_response(job, weights, {}, HISTORY, bigger, features, PredictSpec())
    without_text = {"window_starts_s": features["window_starts_s"]}
    with pytest.raises(InputDataError, match=r"the model reads \['text'\].*add \['text'\] to predict.ablate"):
        predict_response(job, weights, {}, HISTORY, stats, without_text, PredictSpec())
    with pytest.raises(InputDataError, match="ablates every modality the model reads"):
        predict_response(job, weights, {}, HISTORY, stats, without_text, PredictSpec(ablate=["text"]))


def test_held_out_runs_of_the_training_movie_are_scored_on_test_windows_only(rng):
    """One training run from movie second 0: rows 0-19 train, 20-24 val, 25-29 test. A
    held-out repeat is scored on rows 25-29 only (r by hand); a new movie on every row."""
    split = pd.DataFrame({"tr": np.arange(N_TRS), "run": "1", "file_tr": np.arange(N_TRS),
                          "split": ["train"] * 20 + ["val"] * 5 + ["test"] * 5})
    prediction = rng.normal(size=(N_TRS, N_VOXELS)).astype(np.float32)
    measured = (prediction + rng.normal(size=prediction.shape)).astype(np.float32)
    predicted = {"model_units": prediction, "window_starts_s": 1.5 * np.arange(N_TRS)}
    fmri = FmriSpec(subjects={"01": "a.nii.gz"}, tr=1.5)
    evaluate = EvaluateSpec(null_draws=99, min_shift_trs=1)
    repeat = score_heldout_runs(predicted, {"movie": "m.mp4", "training_movie": True}, {"subject_01": measured},
                                split, fmri, StimulusSpec(), evaluate)
    assert repeat["rows"] == list(range(25, 30)) and repeat["runs"]["01"]["trs"] == 5
    by_hand = np.mean([np.corrcoef(prediction[25:, v], measured[25:, v])[0, 1] for v in range(N_VOXELS)])
    assert repeat["runs"]["01"]["mean_r"] == pytest.approx(by_hand, abs=1e-6)
    new = score_heldout_runs(predicted, {"movie": "n.mp4", "training_movie": False}, {"subject_01": measured},
                             split, fmri, StimulusSpec(), evaluate)
    assert new["rows"] == list(range(N_TRS)) and new["runs"]["01"]["trs"] == N_TRS


def test_a_shifted_modality_costs_an_add_and_equals_shifting_its_input(tmp_path, rng):
    """Two modalities (text and the lab's features); shifting text's contribution equals
    encoding the shifted text (and its validity) through the whole model."""
    from giblet_kedro.evaluation.insilico import MoviePredictor, model_inputs
    from giblet_kedro.evaluation.model import TrainedModel

    shapes = ModalityShapes(None, None, False, (DIM,), N_VOXELS, features=(3,))
    spec = {"bottleneck": "voxels", "hidden": 8, "dropout": 0.3, "rank": 4, "context_s": 6.0}
    model = perturbed_model(shapes, spec, seed=1)
    np.savez(tmp_path / "loss_stats.npz", modalities=np.array(["fmri", "text", "features"]),
             fmri_mean=np.zeros(N_VOXELS), fmri_std=np.ones(N_VOXELS), text_mean=rng.normal(size=DIM),
             text_std=np.ones(DIM), features_mean=np.zeros(3), features_std=np.full(3, 2.0))
    job = TrainJob(paths=ArrayPaths(fmri="", loss_stats=str(tmp_path / "loss_stats.npz")), train_rows=[], val_rows=[],
                   mode="cross_subject", shapes=shapes, model=spec, loss={}, train={}, seed=0, run_dir=str(tmp_path),
                   tr=1.5)
    trained = TrainedModel.load(job, model.state_dict())
    valid = np.ones(N_TRS, bool)
    valid[3] = False  # a TR the movie does not cover travels with its features
    arrays = {"text": rng.normal(size=(N_TRS, DIM)), "text_valid": valid, "features": rng.normal(size=(N_TRS, 3)),
              "features_valid": np.ones(N_TRS, bool), "window_starts_s": 1.5 * np.arange(N_TRS)}
    predictor = MoviePredictor(trained, arrays, [])
    stats, sizes = trained.stats, {"text": (DIM,), "features": (3,)}
    for shift in (0, 4, 17):
        rolled = {"text": np.roll(arrays["text"], shift, axis=0), "features": arrays["features"]}
        valids = {"text": np.roll(valid, shift), "features": arrays["features_valid"]}
        by_hand = trained.predict_fmri(model_inputs(rolled, valids, stats, sizes, [], False, N_TRS))
        np.testing.assert_allclose(predictor.shifted("text", shift), by_hand, rtol=1e-5, atol=1e-5)
        if shift == 0:  # the unshifted prediction is the whole model on the movie's inputs
            np.testing.assert_allclose(predictor(), by_hand, rtol=1e-5, atol=1e-5)
    rolled = {"text": arrays["text"], "features": np.roll(arrays["features"], 4, axis=0)}
    by_hand = trained.predict_fmri(model_inputs(rolled, {"text": valid, "features": arrays["features_valid"]}, stats,
                                                sizes, [], False, N_TRS))
    np.testing.assert_allclose(predictor.shifted("features", 4), by_hand, rtol=1e-5, atol=1e-5)


def test_with_several_seeds_the_prediction_is_the_mean_of_the_seeds_models(tmp_path, rng):
    job, weights, stats = tiny_model(tmp_path, rng)
    other = perturbed_model(TrainJob.from_dict(job).shapes, job["model"], seed=1).state_dict()
    text = rng.normal(size=(N_TRS, DIM)).astype(np.float32)
    features = {"text": text, "text_valid": np.ones(N_TRS, bool), "window_starts_s": 1.5 * np.arange(N_TRS)}
    first = predict_response(job, weights, {}, HISTORY, stats, features, PredictSpec())[1]
    second = predict_response(job, other, {}, HISTORY, stats, features, PredictSpec())[1]
    assert np.abs(first["model_units"] - second["model_units"]).mean() > 0.05  # two different models
    both = predict_response({**job, "train": {"seeds": [0, 1]}}, weights, {"1": other}, HISTORY, stats, features,
                            PredictSpec())[1]
    np.testing.assert_allclose(both["model_units"], (first["model_units"] + second["model_units"]) / 2,
                               rtol=1e-5, atol=1e-6)
    assert both["seeds"].tolist() == [0, 1] and first["seeds"].tolist() == [0]

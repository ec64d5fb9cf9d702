"""Evaluation: subjects' test data -> model and ridge predictions -> scores -> pictures."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.pipelines.evaluate.nodes import (
    fit_ridge_reference,
    intersubject_on_rows,
    plot_evaluation,
    predict_test,
    score_evaluation,
)

FEATURES = ["video_features", "audio_codes", "text_embeddings"]
TRAINED = ["fmri_train", "fmri_split", "loss_stats", *FEATURES, "model_checkpoint", "params:model", "params:loss",
           "params:train", "params:experiment_info", "params:train_run_dir"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        node(intersubject_on_rows, ["fmri_raw", "fmri_confounds", "fmri_norm_stats", "fmri_split", "params:fmri"],
             "fmri_intersubject", name="intersubject_agreement"),
        node(predict_test, TRAINED, ["model_test_predictions", "reconstruction_metrics"], name="predict_test_trs"),
        node(fit_ridge_reference, ["fmri_train", "fmri_split", *FEATURES, "params:evaluate", "params:experiment_info"],
             ["ridge_test_predictions", "ridge_reference"], name="fit_ridge_reference"),
        node(score_evaluation,
             ["model_test_predictions", "ridge_test_predictions", "ridge_reference", "reconstruction_metrics",
              "fmri_intersubject", "fmri_train", "fmri_split", "fmri_norm_stats", "params:evaluate",
              "params:experiment_info"],
             ["evaluation_metrics", "voxel_r_map", "evaluation_maps"], name="score_evaluation"),
        node(plot_evaluation, ["evaluation_maps", "model_test_predictions", "params:experiment_info"],
             ["r_map_figure", "reconstruction_figure"], name="plot_evaluation"),
    ])

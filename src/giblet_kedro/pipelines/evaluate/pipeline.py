"""Evaluation: subjects' agreement -> model and ridge predictions -> voxel scores."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.fmri.partials import GROUP_ROWS_DATASET, Partitions
from giblet_kedro.pipelines.evaluate.nodes import (
    fit_ridge_reference,
    intersubject_agreement,
    predict_test,
    score_voxels,
    summarize_evaluation,
)


def create_pipeline(partitions: Partitions, **kwargs) -> Pipeline:
    """Evaluation for an experiment with these partitions: the inter-subject pass reads
    each subject's val and test rows from the fMRI stage's group partials."""
    rows = {name: GROUP_ROWS_DATASET.format(partition=name) for name in partitions.groups()}
    return Pipeline([
        node(intersubject_agreement,
             {"stats": "fmri_norm_stats", "split": "fmri_split", "fmri": "params:fmri", "evaluate": "params:evaluate"}
             | rows, "fmri_intersubject", name="intersubject_agreement"),
        node(predict_test, ["train_job", "model_checkpoint", "seed_checkpoints"], ["model_test_predictions", "reconstruction_metrics"],
             name="predict_test_trs"),
        node(fit_ridge_reference, ["train_job", "fmri_split", "params:evaluate"],
             ["ridge_test_predictions", "ridge_reference"], name="fit_ridge_reference"),
        node(score_voxels,
             ["model_test_predictions", "ridge_test_predictions", "fmri_intersubject", "train_job", "fmri_split",
              "fmri_norm_stats", "params:evaluate"],
             ["voxel_scores", "voxel_r_map", "evaluation_maps"], name="score_voxels"),
        node(summarize_evaluation, ["voxel_scores", "reconstruction_metrics", "ridge_reference", "training_history",
                                    "params:experiment_info"], "evaluation_metrics", name="summarize_evaluation"),
    ])

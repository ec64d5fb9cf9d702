"""Lesions: regions of the voxel layer silenced, the stimulus decoded from what is left."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.pipelines.lesion.nodes import run_lesions


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        node(run_lesions, ["train_job", "model_checkpoint", "training_history", "fmri_norm_stats", "lesion_regions",
                           "params:lesion", "params:stimulus"],
             ["lesion_metrics", "lesion_decoded", "lesion_text", "lesion_audio"], name="run_lesions"),
    ])

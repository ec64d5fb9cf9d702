"""In silico: a movie -> the trained model's predicted brain response, region time
courses, modality ablations, a contrast, and the held-out runs scored against it."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.pipelines.predict.nodes import (
    extract_new_stimulus,
    modality_timing_test,
    predict_response,
    region_timecourses,
    score_heldout_runs,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        node(extract_new_stimulus, ["params:predict", "params:stimulus", "params:fmri", "params:experiment_info",
                                    "audio_codes_tr"],
             ["predict_stimulus", "predict_stimulus_meta"], name="extract_new_stimulus"),
        node(predict_response, ["train_job", "model_checkpoint", "seed_checkpoints", "training_history", "fmri_norm_stats",
                                "predict_stimulus", "params:predict"],
             ["predicted_response", "predicted_voxels", "ablation_maps"], name="predict_response"),
        node(region_timecourses, ["predicted_voxels", "fmri_norm_stats", "predict_regions", "params:predict",
                                  "params:experiment_info"],
             ["predicted_timecourses", "prediction_figure"], name="region_timecourses"),
        node(score_heldout_runs, ["predicted_voxels", "predict_stimulus_meta", "fmri_heldout_normalized",
                                  "fmri_split", "params:fmri", "params:stimulus", "params:evaluate"],
             "heldout_prediction_scores", name="score_heldout_runs"),
        node(modality_timing_test, ["train_job", "model_checkpoint", "predict_stimulus", "heldout_prediction_scores",
                                    "fmri_heldout_normalized", "fmri_norm_stats", "params:predict"],
             ["modality_timing_tests", "modality_p_maps"], name="modality_timing_test"),
    ])

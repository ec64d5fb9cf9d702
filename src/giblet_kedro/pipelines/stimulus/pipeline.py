"""Stimulus stage: movie and the lab's features -> TR-aligned video / audio / text / features (the
model's inputs) -> HRF (the decoders' targets and the ridge's features), all checked against the
fMRI grid."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.pipelines.stimulus.nodes import (
    apply_hrf,
    check_stimulus_alignment,
    collect_model_inputs,
    extract_audio_codes,
    extract_features,
    extract_text_embeddings,
    extract_video_frames,
)


def create_pipeline(**kwargs) -> Pipeline:
    grid_inputs = ["fmri_split", "params:fmri", "params:stimulus"]
    return Pipeline([
        node(extract_video_frames, grid_inputs, "video_frames_tr", name="extract_video_frames"),
        node(extract_audio_codes, [*grid_inputs, "params:experiment_info"], "audio_codes_tr", name="extract_audio_codes"),
        node(extract_text_embeddings, [*grid_inputs, "params:experiment_info"], "text_embeddings_tr",
             name="extract_text_embeddings"),
        node(extract_features, grid_inputs, "stimulus_features_tr", name="extract_stimulus_features"),
        node(apply_hrf, ["video_frames_tr", "params:stimulus"], "video_features", name="video_hrf"),
        node(apply_hrf, ["audio_codes_tr", "params:stimulus"], "audio_codes", name="audio_hrf"),
        node(apply_hrf, ["text_embeddings_tr", "params:stimulus"], "text_embeddings", name="text_hrf"),
        node(apply_hrf, ["stimulus_features_tr", "params:stimulus"], "stimulus_features", name="features_hrf"),
        node(check_stimulus_alignment,
             ["fmri_split", "video_features", "audio_codes", "text_embeddings", "stimulus_features"],
             ["stimulus_alignment", "stimulus_modalities"], name="check_stimulus_alignment"),
        node(collect_model_inputs,
             ["fmri_split", "video_frames_tr", "audio_codes_tr", "text_embeddings_tr", "stimulus_features_tr"],
             "stimulus_inputs", name="collect_model_inputs"),
    ])

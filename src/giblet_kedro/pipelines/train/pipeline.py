"""Training: loss statistics -> DDP training -> verification report."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.pipelines.train.nodes import compute_loss_stats, train_model
from giblet_kedro.pipelines.train.verify import verify_training

FEATURES = ["video_features", "audio_codes", "text_embeddings"]
SPEC = ["params:model", "params:loss", "params:train"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        node(compute_loss_stats, ["fmri_train", "fmri_split", *FEATURES], "loss_stats", name="compute_loss_stats"),
        node(train_model, ["fmri_train", "fmri_split", "loss_stats", *FEATURES, *SPEC, "params:experiment_info",
                           "params:train_run_dir", "params:train_fresh"],
             ["model_checkpoint", "training_history"], name="train_model"),
        node(verify_training,
             ["training_history", "fmri_norm_stats", "fmri_split", "fmri_train", "model_checkpoint", "loss_stats",
              *FEATURES, *SPEC, "params:verify", "params:experiment_info", "params:train_run_dir"],
             ["verification_report", "verification_summary", "loss_curve"], name="verify_training"),
    ])

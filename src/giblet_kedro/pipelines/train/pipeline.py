"""Training: loss statistics -> the training job -> DDP training -> verification report."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.pipelines.train.nodes import loss_statistics, train_model, training_job, verify_training


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        node(loss_statistics, ["fmri_train", "fmri_train_valid", "fmri_split", "stimulus_modalities",
                               "stimulus_inputs"], "loss_stats", name="compute_loss_stats"),
        node(training_job, ["fmri_train", "fmri_train_valid", "fmri_split", "loss_stats", "stimulus_modalities",
                            "stimulus_inputs", "params:training"],
             "train_job", name="build_training_job"),
        node(train_model, ["train_job", "params:train_fresh"], ["model_checkpoint", "training_history", "seed_checkpoints"],
             name="train_model"),
        node(verify_training,
             ["train_job", "training_history", "model_checkpoint", "fmri_norm_stats", "fmri_split", "params:fmri",
              "params:verify"],
             ["verification_report", "verification_summary", "loss_curve"], name="verify_training"),
    ])

"""fMRI stage: raw runs -> subject table -> split -> norm stats -> training tensor."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.pipelines.fmri.nodes import (
    build_fmri_tensor,
    compute_norm_stats,
    inspect_runs,
    make_split,
    normalize_heldout,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        node(inspect_runs, ["fmri_raw", "params:fmri"], "fmri_subjects", name="inspect_fmri_runs"),
        node(make_split, ["fmri_subjects", "params:fmri"], "fmri_split", name="split_fmri_trs"),
        node(
            compute_norm_stats,
            ["fmri_raw", "fmri_mask_input", "fmri_confounds", "fmri_split", "params:fmri"],
            ["fmri_norm_stats", "fmri_cleaning_report"],
            name="compute_fmri_norm_stats",
        ),
        node(build_fmri_tensor, ["fmri_raw", "fmri_confounds", "fmri_norm_stats", "fmri_split", "params:fmri"],
             ["fmri_train", "fmri_train_valid"], name="build_fmri_tensor"),
        node(normalize_heldout, ["fmri_heldout_raw", "fmri_heldout_confounds", "fmri_norm_stats", "params:fmri"],
             "fmri_heldout_normalized", name="normalize_fmri_heldout"),
    ])

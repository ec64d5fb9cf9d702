"""Demo data: a synthetic movie and subjects' fMRI with a known stimulus -> voxel map."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.pipelines.demo_data.nodes import generate_demo


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        node(
            generate_demo,
            ["params:demo", "params:fmri", "params:experiment_info"],
            ["fmri_raw", "fmri_heldout_raw", "demo_movie", "demo_annotations", "demo_ground_truth",
             "demo_regions", "demo_heldout_movie", "demo_heldout_annotations"],
            name="generate_demo_data",
        ),
    ])

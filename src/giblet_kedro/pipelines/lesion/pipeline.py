"""Lesions: brain -> bottleneck read-out, regions silenced, stimulus decoded, pictures."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.pipelines.evaluate.pipeline import TRAINED
from giblet_kedro.pipelines.lesion.nodes import plot_lesions, run_lesions


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        node(run_lesions, [*TRAINED, "fmri_norm_stats", "lesion_regions", "params:lesion", "params:stimulus"],
             ["lesion_metrics", "lesion_decoded", "lesion_text", "lesion_audio"], name="run_lesions"),
        node(plot_lesions, ["lesion_metrics", "lesion_decoded", "params:experiment_info"],
             ["lesion_figure", "lesion_frames"], name="plot_lesions"),
    ])

"""Report: the pictures, then verification, evaluation and lesions in one HTML file."""

from kedro.pipeline import Pipeline, node

from giblet_kedro.pipelines.report.nodes import draw_figures, write_report


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        node(draw_figures, ["evaluation_maps", "model_test_predictions", "lesion_metrics", "lesion_decoded",
                            "voxel_r_map", "params:fmri", "params:experiment_info"], "report_figures",
             name="draw_report_figures"),
        node(write_report, ["verification_summary", "loss_curve", "evaluation_metrics", "lesion_metrics", "lesion_text",
                            "report_figures", "params:experiment_info"], "experiment_report", name="write_report"),
    ])

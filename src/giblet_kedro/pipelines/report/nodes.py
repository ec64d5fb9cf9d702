"""Report nodes: the pictures, then one self-contained HTML file (wiring over
:mod:`giblet_kedro.evaluation.figures` and :mod:`giblet_kedro.evaluation.report`)."""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np

from giblet_kedro.evaluation.figures import evaluation_figures, is_mni, lesion_figures, world_views
from giblet_kedro.evaluation.report import Figures, html_report
from giblet_kedro.spec.schema import FmriSpec


def draw_figures(evaluation_maps: dict[str, np.ndarray], model_test_predictions: dict[str, np.ndarray],
                 lesion_metrics: dict, lesion_decoded: dict[str, np.ndarray], voxel_r_map: nib.Nifti1Image,
                 fmri: FmriSpec, experiment: dict[str, Any]) -> dict:
    """The r-map slices, true and reconstructed frames, lesion effects and lesioned frames;
    for data in MNI space also the r map over the MNI template, as a glass brain and as an
    interactive page."""
    r_map, reconstruction = evaluation_figures(evaluation_maps, model_test_predictions, experiment["name"])
    bars, frames = lesion_figures(lesion_metrics, lesion_decoded, experiment["name"])
    figures = {"r_map": r_map, "reconstruction": reconstruction, "lesion_bars": bars, "lesion_frames": frames}
    if is_mni(fmri.world_space):
        views = world_views(voxel_r_map, experiment["name"])
        figures |= {"r_map_mni": views["stat_map"], "r_map_glass": views["glass_brain"], "r_map_viewer": views["viewer"]}
    return figures


def write_report(verification_summary: str, loss_curve: bytes, evaluation: dict, lesions: dict, lesion_text: str,
                 figures: dict[str, bytes], experiment: dict[str, Any]) -> str:
    """The HTML report of an experiment, every picture embedded."""
    return html_report(verification_summary, evaluation, lesions, lesion_text,
                       Figures(loss_curve=loss_curve, **figures), experiment)

"""Report nodes: the pictures, then one self-contained HTML file (wiring over
:mod:`giblet_kedro.evaluation.figures` and :mod:`giblet_kedro.evaluation.report`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from giblet_kedro.evaluation.figures import evaluation_figures, lesion_figures
from giblet_kedro.evaluation.report import Figures, html_report


def draw_figures(evaluation_maps: dict[str, np.ndarray], model_test_predictions: dict[str, np.ndarray],
                 lesion_metrics: dict, lesion_decoded: dict[str, np.ndarray], experiment: dict[str, Any]) -> dict:
    """The r-map slices, true and reconstructed frames, lesion effects and lesioned frames."""
    r_map, reconstruction = evaluation_figures(evaluation_maps, model_test_predictions, experiment["name"])
    bars, frames = lesion_figures(lesion_metrics, lesion_decoded, experiment["name"])
    return {"r_map": r_map, "reconstruction": reconstruction, "lesion_bars": bars, "lesion_frames": frames}


def write_report(verification_summary: str, loss_curve: bytes, evaluation: dict, lesions: dict, lesion_text: str,
                 figures: dict[str, bytes], experiment: dict[str, Any]) -> str:
    """The HTML report of an experiment, every picture embedded."""
    return html_report(verification_summary, evaluation, lesions, lesion_text,
                       Figures(loss_curve=loss_curve, **figures), experiment)

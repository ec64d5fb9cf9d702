"""Maps of data in MNI space drawn over nilearn's MNI template, with a glass brain and an
interactive page in the report; other data keep the voxel-grid slices."""

from __future__ import annotations

import json
import re

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest

from giblet_kedro.datasets.arrays import FiguresDataset
from giblet_kedro.evaluation.figures import is_mni, message_figure, world_views
from giblet_kedro.evaluation.report import Figures, html_report
from giblet_kedro.spec.load import parse_spec
from tests.conftest import REPO


def test_which_spaces_are_mni():
    assert is_mni("MNI152NLin2009cAsym") and is_mni("MNI152NLin6Asym") and is_mni("mni305")
    assert not is_mni(None) and not is_mni("T1w") and not is_mni("fsnative")
    spec = parse_spec('name: x\nfmri: {bids: {root: /b, task: movie, space: MNI152NLin2009cAsym}}\n')
    assert spec.fmri.world_space == "MNI152NLin2009cAsym"
    assert parse_spec('name: x\nfmri: {subjects: {"01": a.nii.gz}, tr: 1.5, space: MNI152NLin6Asym}\n').fmri.world_space \
        == "MNI152NLin6Asym"
    assert parse_spec('name: x\nfmri: {subjects: {"01": a.nii.gz}, tr: 1.5}\n').fmri.world_space is None


@pytest.fixture(scope="module")
def mni_r_map():
    """A 3 mm r map in MNI space (the affine of an MNI grid) with one blob in left visual cortex."""
    affine = np.array([[3.0, 0, 0, -78], [0, 3, 0, -112], [0, 0, 3, -70], [0, 0, 0, 1]])
    data = np.zeros((53, 63, 52), np.float32)
    i, j, k = np.round(np.linalg.solve(affine, [-20, -90, 0, 1])[:3]).astype(int)  # MNI (-20, -90, 0)
    data[i - 2:i + 3, j - 2:j + 3, k - 2:k + 3] = 0.6
    return nib.Nifti1Image(data, affine)


def test_world_views_are_drawn_over_the_template_and_the_viewer_is_offline(mni_r_map):
    views = world_views(mni_r_map, "demo")
    assert set(views) == {"stat_map", "glass_brain", "viewer"}
    html = views["viewer"]
    assert "brainsprite" in html.lower() and len(html) > 100_000
    assert not re.search(r"<script[^>]+src=[\"']https?://", html)  # everything inline: works offline
    for name in ("stat_map", "glass_brain"):
        assert views[name].axes
        plt.close(views[name])


def test_report_shows_world_views_only_when_given(tmp_path, mni_r_map):
    png = b"\x89PNG fake"
    plain = Figures(loss_curve=png, r_map=png, reconstruction=png, lesion_bars=png, lesion_frames=png)
    # the evaluation metrics of a real demo run (features-only spec, no lesions)
    evaluation = json.loads((REPO / "tests/data/reports/evaluation_metrics_demo.json").read_text())
    experiment = {"name": "x", "spec_file": "x.yml", "fingerprints": {}}
    without = html_report("", evaluation, {}, "", plain, experiment)
    assert "In MNI space" not in without
    world = Figures(**{**plain.__dict__, "r_map_mni": png, "r_map_glass": png, "r_map_viewer": b"<html>"})
    with_views = html_report("", evaluation, {}, "", world, experiment)
    assert "In MNI space" in with_views and '<iframe src="r_map_viewer.html"' in with_views


def test_optional_figures_may_be_left_out(tmp_path):
    dataset = FiguresDataset(str(tmp_path), {"r_map": "r.png", "r_map_viewer": "viewer.html"},
                             optional=["r_map_viewer"])
    dataset.save({"r_map": message_figure("r")})
    assert dataset.exists() and set(dataset.load()) == {"r_map"}
    dataset.save({"r_map": message_figure("r"), "r_map_viewer": "<html>viewer</html>"})
    assert dataset.load()["r_map_viewer"] == b"<html>viewer</html>"
    with pytest.raises(Exception, match=r"figures \[.r_map.\] are missing"):
        dataset.save({"r_map_viewer": "<html></html>"})

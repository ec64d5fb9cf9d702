"""Lineage review: `kedro viz build --include-previews` gives a site that works offline,
with previews of the project's datasets, and that headless Chromium renders."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO
from tests.e2e.harness import kedro

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a machine without internet: no background connections, and every host but
# the local server unresolvable, so the page can only work offline.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                  "--virtual-time-budget=20000", "--window-size=1600,1000"]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output readable
        pass


def serve(project):
    """The built site on a local HTTP server (port 0: the OS picks a free one)."""
    handler = functools.partial(QuietHandler, directory=str(project / "build"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def chromium(*args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        if os.environ.get("GIBLET_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed; `make test` installs Debian's package (apt-get install chromium)")
        pytest.skip("chromium is not installed (make test installs it)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=120)


def _graph(project) -> tuple[dict, dict[str, str]]:
    graph = json.loads((project / "build" / "api" / "main").read_text())
    return graph, {node["name"]: node["id"] for node in graph["nodes"]}


def _preview(project, ids: dict[str, str], name: str) -> tuple[str, object]:
    node = json.loads((project / "build" / "api" / "nodes" / ids[name]).read_text())
    return node["preview_type"], node["preview"]


def test_site_previews_dataset_contents_before_anything_ran(project):
    kedro(project, "viz", "build", "--include-previews")
    graph, ids = _graph(project)
    assert {"train", "evaluate", "lesion", "report"} <= {p["id"] for p in graph["pipelines"]}
    kind, value = _preview(project, ids, "fmri_raw")  # the demo is not generated yet: paths, and no crash
    assert kind == "JSONPreview" and "01/1" in json.loads(value)
    kind, value = _preview(project, ids, "fmri_split")
    assert kind == "TablePreview"
    kind, value = _preview(project, ids, "experiment_report")
    assert kind == "HTMLPreview"


def test_built_site_renders_the_train_pipeline_offline(demo_features, copy_of):
    """After a run, previews carry the data (stats: subjects; NIfTI: shape, affine, TR),
    and Chromium, with every outside host unreachable, draws the train pipeline's nodes."""
    project = copy_of(demo_features)
    kedro(project, "viz", "build", "--include-previews")
    _, ids = _graph(project)
    stats = json.loads(_preview(project, ids, "fmri_norm_stats")[1])
    assert stats["normalization_stats"]["subjects"] == ["01", "02", "03", "04"]
    assert stats["normalization_stats"]["voxels"] > 1000
    runs = json.loads(_preview(project, ids, "fmri_raw")[1])
    assert runs["01/1"]["shape"] == [14, 16, 12, 600] and runs["01/1"]["tr_s"] == 1.5
    assert len(runs["01/1"]["affine"]) == 4

    server, url = serve(project)
    try:
        dom = chromium("--dump-dom", f"{url}/?pid=train").stdout
        drawn = set(re.findall(r'class="pipeline-node pipeline-node--task"[^>]*data-node-fullname="([^"]+)"', dom))
        from giblet_kedro.pipeline_registry import register_pipelines

        expected = {node.name for node in register_pipelines(["train"])["train"].nodes}
        assert drawn == expected, (sorted(drawn), sorted(expected))
        assert {"train_model", "verify_training", "build_fmri_tensor"} <= drawn

        # The screenshot for docs/: the same page with kedro-viz's first-visit feature tour off.
        index = (project / "build" / "index.html").read_text()
        hints_off = '<script>localStorage.setItem("KedroViz", JSON.stringify({showFeatureHints: false}))</script>'
        (project / "build" / "screenshot.html").write_text(index.replace("<head>", "<head>" + hints_off, 1))
        shot = project / "lineage_train.png"
        result = chromium(f"--screenshot={shot}", f"{url}/screenshot.html?pid=train")
    finally:
        server.shutdown()
    assert shot.read_bytes()[:4] == b"\x89PNG" and len(shot.read_bytes()) > 20_000, result.stderr[-2000:]
    if os.environ.get("GIBLET_UPDATE_DOCS"):  # refresh the screenshot kept in docs/
        shutil.copy(shot, REPO / "docs" / "lineage_train.png")

"""One self-contained HTML report per experiment: verification, evaluation, lesions,
with every picture embedded (it opens offline, from anywhere)."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figures:
    """The report's pictures, PNG bytes each."""

    loss_curve: bytes
    r_map: bytes
    reconstruction: bytes
    lesion_bars: bytes
    lesion_frames: bytes
    # Data in MNI space only: the r map over the template, as a glass brain, and the
    # interactive viewer (a page beside the report).
    r_map_mni: bytes | None = None
    r_map_glass: bytes | None = None
    r_map_viewer: bytes | None = None


def _world_views(figures: Figures) -> list[str]:
    """The MNI-space pictures and a frame holding the interactive viewer (its page sits
    beside the report, ``r_map_viewer.html``), when the data are in MNI space."""
    if figures.r_map_mni is None:
        return []
    parts = ["<h3>In MNI space</h3>", _image(figures.r_map_mni, "r map over the MNI template")]
    if figures.r_map_glass is not None:
        parts.append(_image(figures.r_map_glass, "r map, glass brain"))
    if figures.r_map_viewer is not None:
        parts.append('<p>Interactive: <a href="r_map_viewer.html">r_map_viewer.html</a></p>'
                     '<iframe src="r_map_viewer.html" width="100%" height="460" style="border:0"></iframe>')
    return parts


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _alone_rows(lesions: dict) -> list[list[str]]:
    """Per region and modality: how well the region alone reconstructs the stimulus."""
    def number(value) -> str:
        return "" if value is None else f"{value:.3f}"

    return [[name, m, number(e.get("normalized_loss")), number(e.get("sample_r_mean")), number(e.get("code_accuracy"))]
            for name, entry in lesions["regions"].items() for m, e in entry.get("alone", {}).items()]


def _grid(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _markdown_table(text: str) -> str:
    """The verification summary / decoded text (Markdown tables) as HTML tables."""
    out, rows = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", " "} for c in cells):
                rows.append(cells)
            continue
        if rows:
            out.append("<table>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                           for r in rows) + "</table>")
            rows = []
        if line.startswith("#"):
            continue  # the report has its own headings
        if line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if rows:
        out.append("<table>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                       for r in rows) + "</table>")
    return "\n".join(out)


def html_report(verification_summary: str, evaluation: dict, lesions: dict, lesion_text: str, figures: Figures,
                experiment: dict[str, Any]) -> str:
    """The HTML report."""
    model, ridge = evaluation["autoencoder"], evaluation["ridge"]
    ceiling = evaluation.get("noise_ceiling", {})
    headline = [
        ("test TRs", evaluation["test_trs"]), ("voxels", evaluation["voxels"]),
        ("autoencoder mean r / median r", f"{model['mean_r']:.3f} / {model['median_r']:.3f}"),
        ("ridge reference mean r / median r", f"{ridge['mean_r']:.3f} / {ridge['median_r']:.3f}"),
        ("autoencoder minus ridge, mean r on " + evaluation["comparison"]["on"],
         f"{evaluation['comparison']['difference']:+.3f} (95% CI {evaluation['comparison']['ci95'][0]:+.3f} to "
         f"{evaluation['comparison']['ci95'][1]:+.3f}): {evaluation['comparison']['verdict']}"),
        ("share of voxels significant (autoencoder, FDR; per-voxel null)", model["share_significant"]),
        ("null", evaluation["null"]),
    ]
    if ceiling:
        headline += [("noise ceiling median", ceiling["median"]), ("reliable voxels", ceiling["reliable_voxels"]),
                     ("autoencoder r / ceiling (reliable voxels)", model.get("r_over_ceiling")),
                     ("ridge r / ceiling (reliable voxels)", ridge.get("r_over_ceiling"))]
    seeds = evaluation.get("seeds")
    if seeds:
        headline.append((f"seeds {seeds['seeds']}: each model's mean r on {evaluation['comparison']['on']} "
                         "(the autoencoder above is their ensemble mean)",
                         f"{seeds['mean']:.3f} ± {seeds['sd']:.3f} (min {seeds['min']:.3f}, max {seeds['max']:.3f}); "
                         f"ensemble {seeds['ensemble_mean_r']:.3f} ({seeds['ensemble_gain']:+.3f})"))
    recon_rows = [(f"{name}: {key}", value) for name, entry in evaluation["reconstruction"].items()
                  for key, value in entry.items()]
    parts = [
        f"<h1>Experiment report: {html.escape(experiment['name'])}</h1>",
        f"<p>Spec: <code>{html.escape(experiment['spec_file'])}</code>"
        + "".join(f" <code>{html.escape(k)}={html.escape(str(v))}</code>"
                  for k, v in (experiment.get("overrides") or {}).items())
        + " (stage fingerprints at the end)</p>",
        "<h2>Training verification</h2>", _markdown_table(verification_summary), _image(figures.loss_curve, "loss curve"),
        "<h2>Held-out fMRI prediction</h2>", _table(headline), _image(figures.r_map, "r map"),
        *_world_views(figures),
        "<h2>Reconstruction from the stimulus (test TRs)</h2>", _table(recon_rows),
        _image(figures.reconstruction, "reconstructed frames"),
        "<h2>Lesions</h2>",
    ]
    if lesions.get("regions"):
        rows = [("model layout", lesions["layout"]), ("voxel layer from", lesions["source"]),
                ("read-out", lesions["readout"]), ("method", lesions["method"]), ("units", lesions["units"]),
                ("controls", lesions["random_regions"]), ("statistics", lesions["statistics"]),
                ("normalized loss, decoded from the stimulus", lesions["from_stimulus"]["normalized_loss"]),
                ("normalized loss, decoded from the intact voxel layer", lesions["intact"]["normalized_loss"])]
        effect_rows = [[name, str(entry["voxels"]), m, f"{e['effect']:+.4f}",
                        f"[{e['ci95'][0]:+.4f}, {e['ci95'][1]:+.4f}]", f"{e['p']:.4f}",
                        "yes" if e.get("fdr_significant") else "no",
                        f"{e['random_q05_q50_q95'][1]:+.4f} / {e['random_q05_q50_q95'][2]:+.4f}"]
                       for name, entry in lesions["regions"].items() for m, e in entry["effects"].items()]
        header = ["region", "voxels", "modality", "effect", "95% CI", "p", "FDR", "random median / 95%"]
        parts += [_table(rows), _grid(header, effect_rows), _image(figures.lesion_bars, "lesion comparison"),
                  "<h3>What each region sees: the stimulus decoded from the region alone</h3>",
                  "<p>Every other voxel silenced the same way; normalized loss (1 = the training mean), "
                  "frame or embedding r with the true stimulus, code accuracy. Frames, decoded text and "
                  "audio below show each region alone (<code>&lt;region&gt; alone</code>) next to the "
                  "intact layer, each lesion and the original.</p>",
                  _grid(["region", "modality", "normalized loss", "r with the true stimulus", "code accuracy"],
                        _alone_rows(lesions)),
                  _image(figures.lesion_frames, "lesion frames"), _markdown_table(lesion_text)]
        fingerprint = experiment.get("fingerprints", {}).get("lesion")
        if fingerprint:
            from giblet_kedro.spec.compile import STAGES

            folder = STAGES["lesion"].cache_root() / fingerprint / "audio"
            parts.append(f"<p>Decoded audio (EnCodec's decoder; true codes resynthesized for comparison): "
                         f"<code>{html.escape(str(folder))}/*.wav</code></p>")
    else:
        parts.append("<p>The spec has no lesion section.</p>")
    parts += ["<h2>Provenance: stage fingerprints</h2>",
              "<p>Each stage's cache folder is named by the hash of what produced it.</p>",
              _table([(stage, fp) for stage, fp in experiment.get("fingerprints", {}).items()])]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left;font-size:13px}img{max-width:100%;margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(experiment['name'])}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")

"""The autoencoder against the ridge reference on real fMRI: Alice in Wonderland.

Data (``tests/data/alice``, CC-BY 4.0; Brennan et al. 2016): 28 listeners' 6 ROI time
courses (LATL RATL LPTL LIPL LPreM LIFG), 362 volumes of 2 s each, the first 10 volumes
of the scan dropped (so the first kept volume is at story second 20), and the story's
word-level Praat transcript. Subject s33 is all zeros in the release and is left out:
27 listeners.

Each listener's time courses are wrapped as a (6, 1, 1, 362) NIfTI. The spec's stimulus
is the transcript alone, as two modalities: the word rate (``stimulus.features``:
words starting in each TR, per second) and the words themselves (``stimulus.text``:
each word embedded by CLIP ViT-B-32, random weights: none can be downloaded here, so a
word's embedding is a fixed random code of its tokens), averaged over each TR. The
fMRI is the listeners' average (``cross_subject``), the last 15% of TRs the test block.
One ``kedro run --pipelines=evaluate`` trains the autoencoder and fits the ridge on
the same features; the evaluation scores both on the test TRs, each ROI against the
listeners' average time course, and their paired difference with a delete-a-block
jackknife interval::

    python benchmarks/alice_target.py [--data tests/data/alice] [--epochs 60] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmri_bench  # noqa: E402  (same folder: the throwaway project)

REPO = Path(__file__).resolve().parents[1]
TR = 2.0
DROPPED_VOLUMES = 10
ROIS = ("LATL", "RATL", "LPTL", "LIPL", "LPreM", "LIFG")


def listener_runs(data: Path, out: Path) -> tuple[dict[str, Path], list[str]]:
    """Each listener's ROI time courses as a (6, 1, 1, n_trs) float32 NIfTI (TR 2 s), and
    the listeners left out (constant in every ROI)."""
    runs, skipped = {}, []
    for table in sorted((data / "6mm").glob("s*-timecourses.txt")):
        sid = table.name.split("-")[0]
        series = np.loadtxt(table, dtype=np.float64)  # (n_trs, 6)
        if np.all(series.std(axis=0) == 0):
            skipped.append(sid)
            continue
        image = nib.Nifti1Image(series.T[:, None, None, :].astype(np.float32), np.diag([6.0, 6.0, 6.0, 1.0]))
        image.header.set_xyzt_units(xyz="mm", t="sec")
        image.header["pixdim"][4] = TR
        runs[sid] = out / f"{sid}_bold.nii.gz"
        nib.save(image, runs[sid])
    return runs, skipped


def alice_spec(path: Path, runs: dict[str, Path], mask: Path, textgrid: Path, epochs: int, seeds: list[int]) -> None:
    subjects = "\n".join(f'    "{sid}": {file}' for sid, file in runs.items())
    path.write_text(f"""name: alice
fmri:
  subjects:
{subjects}
  mask: {mask}
  tr: {TR}
  zscore: {{ddof: 1}}
  clean: {{detrend: true}}
  mode: cross_subject
  split: {{val: 0.15, test: 0.15}}
stimulus:
  onset_s: {DROPPED_VOLUMES * TR}
  features:
    words: {{textgrid: {textgrid}, tier: word}}
  text: {{annotations: {textgrid}, columns: [word], model: ViT-B-32, weights: random}}
  hrf: {{kind: glover, slice_time_ref: 0.0}}
model: {{bottleneck: voxels, rank: 6, code_rank: 8, hidden: 64, dropout: 0.3, temporal: lags, context_s: 20}}
loss: {{normalize: variance, weights: {{text: 1, features: 1, fmri: 2}}}}
train: {{epochs: {epochs}, batch_size: 2, window_trs: 32, lr: 1.0e-3, warmup_epochs: 1, precision: fp32, devices: 1,
        seeds: {seeds}}}
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "alice")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    env.pop("GIBLET_PROJECT_ROOT", None)
    kedro = str(Path(sys.executable).parent / "kedro")
    with tempfile.TemporaryDirectory(prefix="giblet-alice-") as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        runs, skipped = listener_runs(args.data, raw)
        mask = raw / "mask.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((6, 1, 1), np.uint8), np.diag([6.0, 6.0, 6.0, 1.0])), mask)
        project, _ = fmri_bench.giblet_project(runs, mask, Path(tmp) / "project")
        spec = project / "alice.yml"
        alice_spec(spec, runs, mask, args.data / "DownTheRabbitHoleFinal_exp120_pad_1.TextGrid", args.epochs,
                   args.seeds)
        print(f"{len(runs)} listeners ({', '.join(skipped) or 'none'} left out: constant), {len(ROIS)} ROIs",
              flush=True)
        measured = fmri_bench.measured([kedro, "run", "--pipelines=evaluate", "--params", f"experiment={spec}"],
                                       env=env, cwd=project)
        metrics = json.loads(next(project.glob("data/07_model_output/evaluate/*/evaluation_metrics.json")).read_text())
        maps = np.load(next(project.glob("data/07_model_output/evaluate/*/evaluation_maps.npz")))
    comparison = metrics["comparison"]
    print(f"\nevaluate pipeline: {measured['wall_s']:.0f} s; weights of epoch {metrics['weights']['epoch']} "
          f"({metrics['weights']['reason']}); {metrics['test_trs']} test TRs")
    print(f"{'ROI':<8}{'autoencoder r':>15}{'ridge r':>10}{'ceiling':>10}")
    for index, roi in enumerate(ROIS):
        ceiling = maps["ceiling"][index] if "ceiling" in maps else float("nan")
        print(f"{roi:<8}{maps['r_model'][index]:>15.3f}{maps['r_ridge'][index]:>10.3f}{ceiling:>10.3f}")
    print(f"mean r over the 6 ROIs (the {len(runs)} listeners' average): autoencoder {metrics['autoencoder']['mean_r']:.3f}, "
          f"ridge {metrics['ridge']['mean_r']:.3f}")
    print(f"paired, on {comparison['on']} ({comparison['voxels']}): difference {comparison['difference']:+.3f} "
          f"(95% CI {comparison['ci95'][0]:+.3f} to {comparison['ci95'][1]:+.3f}, {comparison['interval']}): "
          f"{comparison['verdict']}")
    if "seeds" in metrics:
        seeds = metrics["seeds"]
        print(f"seeds {seeds['seeds']}: each {[round(r, 3) for r in seeds['each_mean_r']]}, ensemble "
              f"{seeds['ensemble_mean_r']:.3f}")
    target = metrics["autoencoder"]["mean_r"] - metrics["ridge"]["mean_r"] >= -0.01
    print(f"target (within 0.01 r of the ridge, or better): {'met' if target else 'NOT met'}")


if __name__ == "__main__":
    main()

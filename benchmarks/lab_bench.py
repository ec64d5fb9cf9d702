"""Every stage of the ``train`` workflow at the lab's sizes, each in its own ``kedro run``.

Sizes (the Sherlock lab's):

- fMRI: 5 subjects x 946 TRs, 83,138 voxels in a 61x73x61 grid, int16 + scale, gzipped
  (the data of ``fmri_bench.py``);
- video: a 23.65-minute movie (946 TRs of 1.5 s) at 160x90 and 25 fps, 3 frames per TR;
- audio: its 23.65-minute soundtrack through EnCodec 24 kHz at 3 kbps (4 codebooks);
- text: 1,000 annotation segments (distinct texts) through CLIP ViT-B-32;
- training: the default model (the voxel layer: one unit per voxel), 1 epoch on 2 gloo
  ranks, the default batch size (2 per rank), then the verification report.

The movie is the demo's renderer (a disc, a square, a bar, flashes; tones, noise bursts,
clicks) at those sizes. Model weights are random (none can be downloaded here): the
extractors' cost is that of the real architectures. Each step is one ``kedro run`` in a
fresh process, Kedro start-up included, measured for wall time and the peak RSS of its
largest process (for training: the largest rank, or the launcher). Usage::

    python benchmarks/lab_bench.py [--data data/bench] [--trs 946] [--segments 1000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmri_bench  # noqa: E402  (same folder: the lab-size fMRI data and the measuring wrapper)

from giblet_kedro.datasets.movie import Movie, write_movie  # noqa: E402
from giblet_kedro.demo.generate import make_stimulus, render_audio, render_frames  # noqa: E402

TR = 1.5
FPS = 25
SIZE = (160, 90)
AUDIO_RATE = 24_000
WORDS = ("Sherlock John Mrs Hudson Lestrade Molly cab flat Baker Street phone text lab morgue victim pink case "
         "suitcase poison pills Mycroft car warehouse bottle choice gun window chase rooftop restaurant police "
         "press conference Anderson Donovan deduction violin skull cigarette patches rain night taxi driver").split()

STEPS = [  # (what, kedro run arguments); each resumes from the caches of the ones before
    ("fMRI stage (stats + tensor)", ["--pipelines=fmri"]),
    ("video frames (decode, 160x90, 3/TR)", ["--pipelines=stimulus", "--nodes=extract_video_frames"]),
    ("audio (EnCodec 24 kHz, 3 kbps)", ["--pipelines=stimulus", "--nodes=extract_audio_codes"]),
    ("text (CLIP ViT-B-32, 1,000 segments)", ["--pipelines=stimulus", "--nodes=extract_text_embeddings"]),
    ("HRF and alignment (4 modalities)", ["--pipelines=stimulus"]),
    ("training, 1 epoch, 2 gloo ranks", ["--pipelines=train", "--to-nodes=train_model"]),
    ("verification report", ["--pipelines=train"]),
]


def write_movie_files(folder: Path, n_trs: int, segments: int) -> tuple[Path, Path]:
    """The lab-size movie (video + soundtrack) and an annotation table of ``segments`` rows."""
    movie_path, table_path = folder / "movie.mp4", folder / "annotations.csv"
    duration = n_trs * TR
    if not movie_path.exists():
        rng = np.random.default_rng(0)
        stimulus = make_stimulus(rng, duration, FPS)
        print(f"  rendering {len(stimulus.video):,} frames at {SIZE[0]}x{SIZE[1]} and {duration / 60:.2f} min of "
              "audio", flush=True)
        write_movie(Movie(frames=render_frames(stimulus, SIZE), fps=FPS,
                          audio=render_audio(stimulus, AUDIO_RATE, rng), sample_rate=AUDIO_RATE), movie_path)
    if not table_path.exists():
        rng = np.random.default_rng(1)
        bounds = np.linspace(0.0, duration, segments + 1)
        texts = [f"{i}: " + " ".join(rng.choice(WORDS, size=8)) for i in range(segments)]  # all distinct
        pd.DataFrame({"Start Time (s)": bounds[:-1].round(3), "End Time (s)": bounds[1:].round(3),
                      "Scene Details - A Level": texts}).to_csv(table_path, index=False)
    return movie_path, table_path


def lab_spec(path: Path, subjects: dict[str, Path], mask: Path, movie: Path, table: Path) -> None:
    lines = "\n".join(f'    "{sid}": {file}' for sid, file in subjects.items())
    path.write_text(f"""name: lab_bench
fmri:
  subjects:
{lines}
  mask: {mask}
  tr: {TR}
  zscore: {{ddof: 1}}
  mode: cross_subject
  split: {{val: {fmri_bench.VAL}, test: {fmri_bench.TEST}}}
stimulus:
  video: {{path: {movie}, size: [{SIZE[0]}, {SIZE[1]}], frames_per_tr: 3}}
  audio: {{path: {movie}, model: encodec_24khz, bandwidth: 3.0, weights: random}}
  text:
    annotations: {table}
    start: "Start Time (s)"
    end: "End Time (s)"
    columns: ["Scene Details - A Level"]
    model: ViT-B-32
    weights: random
  hrf: {{kind: glover}}
train: {{epochs: 1, devices: 2, backend: gloo, precision: fp32, checkpoint_every: 1}}
verify: {{drop_within_epochs: 1}}
""")


SINGLE_PROCESS = """
import sys
from giblet_kedro.datasets.confounds import ConfoundTablesDataset
from giblet_kedro.datasets.nifti import NiftiRunsDataset
from giblet_kedro.pipelines.fmri.nodes import build_fmri_tensor, compute_norm_stats, inspect_runs, make_split
from giblet_kedro.spec.resolvers import compiled
import nibabel as nib, numpy as np
fmri = compiled(sys.argv[1]).spec.fmri
runs = NiftiRunsDataset(fmri.run_files).load()
confounds = ConfoundTablesDataset(fmri.confound_files).load()
split = make_split(inspect_runs(runs, fmri), fmri)
masks = {key: nib.load(path) for key, path in fmri.mask_files.items()}
stats, _ = compute_norm_stats(runs, masks, confounds, split, fmri)
tensor, _ = build_fmri_tensor(runs, confounds, stats, split, fmri)
np.save(sys.argv[2], tensor)
"""

INFLATE = """
import sys, time
from isal import igzip
started = time.perf_counter()
for path in sys.argv[1:]:
    with igzip.open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass
print(time.perf_counter() - started)
"""


def inflate_seconds(paths: list[Path], env: dict) -> float:
    """One core inflating every run once (ISA-L, as the reader), in a fresh process."""
    import subprocess

    result = subprocess.run([sys.executable, "-c", INFLATE, *map(str, paths)], capture_output=True, text=True,
                            env=env, check=True)
    return float(result.stdout.strip())


# The last commit before the fMRI stage became map-reduce: "today's" stage, one node.
BEFORE_MAP_REDUCE = "09926ff"


# The last commit whose model read one TR at a time (no windows, no temporal module):
# the training baseline of ``--baseline``.
PER_TR_MODEL = "88578ec"


def checkout_before(folder: Path, commit: str = BEFORE_MAP_REDUCE) -> Path | None:
    """The project's sources at ``commit`` (a git worktree), or None outside a clone."""
    import subprocess

    result = subprocess.run(["git", "-C", str(fmri_bench.REPO), "worktree", "add", "--detach", str(folder),
                             commit], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    (folder / "conf" / "local").mkdir(exist_ok=True)
    return folder / "src"


def compare_runners(kedro: str, project: Path, spec: Path, env: dict, subjects: dict[str, Path]) -> None:
    """The fMRI stage five ways, each recomputing everything in a fresh process, and the
    decompression floor; whether they wrote the same tensor."""
    before = checkout_before(project.parent / "before")
    runs = {
        "today: one node (kedro run, before map-reduce)": [kedro, "run", "--pipelines=fmri", "--recompute"],
        "one process, no Kedro (the same streaming passes)": [sys.executable, "-c", SINGLE_PROCESS, str(spec),
                                                              str(project / "single.npy")],
        "map-reduce, sequential (LockingRunner)": [kedro, "run", "--pipelines=fmri", "--recompute"],
        "map-reduce, ParallelRunner (2 processes)": [kedro, "run", "--pipelines=fmri", "--recompute",
                                                     "--runner=ParallelRunner"],
        "map-reduce, Dask LocalCluster (2 workers)": [kedro, "run", "--pipelines=fmri", "--recompute",
                                                      "--runner=giblet_kedro.runner.DaskRunner"],
    }
    if before is None:
        print("(no git clone here: today's one-node stage is left out)")
        del runs["today: one node (kedro run, before map-reduce)"]
    rows, tensors = {}, {}
    dask_env = {**env, "GIBLET_DASK_WORKERS": "2"}
    for name, command in runs.items():
        if command[0] == kedro:
            command = [*command, "--params", f"experiment={spec}"]
        if name.startswith("today"):  # its own code and catalog
            command = [*command, f"--conf-source={before.parent / 'conf'}"]
        print(f"- fMRI stage, {name} ...", flush=True)
        run_env = {**dask_env, "PYTHONPATH": str(before)} if name.startswith("today") else dask_env
        for old in project.glob("data/05_model_input/fmri_tensor/*/fmri_train.npy"):
            old.unlink()
        rows[name] = fmri_bench.measured(command, env=run_env, cwd=project)
        print(f"  {rows[name]['wall_s']:.1f} s", flush=True)
        written = project / "single.npy" if name.startswith("one process") else \
            next(project.glob("data/05_model_input/fmri_tensor/*/fmri_train.npy"))
        tensors[name] = written.read_bytes()
    if before is not None:
        import subprocess

        subprocess.run(["git", "-C", str(fmri_bench.REPO), "worktree", "remove", "--force", str(before.parent)],
                       capture_output=True)
    print("- fMRI stage, nothing to do (every cache there: Kedro, checks, MLflow) ...", flush=True)
    fixed = fmri_bench.measured([kedro, "run", "--pipelines=fmri", "--params", f"experiment={spec}"], env=env,
                                cwd=project)["wall_s"]
    inflate = inflate_seconds(list(subjects.values()), env)
    partials = sum(p.stat().st_size for p in project.glob("data/05_model_input/fmri_runs/*/groups/*/*.npy"))
    kept = sum(p.stat().st_size for p in project.glob("data/03_primary/fmri_stats/*/runs/*/voxels.npy"))
    base = next(iter(rows.values()))
    n_trs = fmri_bench.nib.load(next(iter(subjects.values()))).shape[3]
    print(f"\n{f'fMRI stage ({len(subjects)} x {n_trs} TRs)':<50}{'wall s':>9}{'peak RSS GB':>13}{'wall ratio':>12}")
    for name, measured in rows.items():
        print(f"{name:<50}{measured['wall_s']:>9.1f}{measured['peak_rss_gb']:>13.2f}"
              f"{measured['wall_s'] / base['wall_s']:>12.2f}")
    print(f"{'decompression floor, 2 passes on 1 core':<50}{2 * inflate:>9.1f}{'':>13}{2 * inflate / base['wall_s']:>12.2f}")
    print(f"{'decompression floor, 2 passes on 2 cores':<50}{inflate:>9.1f}{'':>13}{inflate / base['wall_s']:>12.2f}")
    print(f"{'nothing to do (start-up, checks, MLflow)':<50}{fixed:>9.1f}{'':>13}{fixed / base['wall_s']:>12.2f}")
    sequential = rows["map-reduce, sequential (LockingRunner)"]["wall_s"]
    parallel = rows["map-reduce, ParallelRunner (2 processes)"]["wall_s"]
    work = 2 * max(sequential - parallel, 0.0)  # what 2 processes halve: the map nodes
    serial = max(sequential - fixed - work, 0.0)  # the reduces, partial I/O, the split
    n_partitions = len(subjects)
    model = ", ".join(f"N={n}: {fixed + serial + work / min(n, n_partitions):.1f} s" for n in (1, 2, 4, 8, 17))
    print(f"scaling model, T(N) = {fixed:.1f} (fixed) + {serial:.1f} (reduces) + {work:.1f} / min(N, "
          f"{n_partitions} partitions): {model}")
    ours = {name: t for name, t in tensors.items() if not name.startswith("today")}
    first = next(iter(ours.values()))
    line = f"same tensor, bitwise, one process and every runner: {all(t == first for t in ours.values())}"
    if len(ours) < len(tensors):  # today's stage summed the subjects in one sequence, not by group
        today = next(t for name, t in tensors.items() if name.startswith("today"))
        as_array = [np.load(io.BytesIO(t)) for t in (today, first)]
        line += f"; today's within {np.abs(as_array[0] - as_array[1]).max():.1e}"
    print(f"{line}; map partials on disk: {partials / 1e9:.2f} GB, kept voxels {kept / 1e9:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=fmri_bench.REPO / "data" / "bench")
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument("--trs", type=int, default=946)
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--runners", action="store_true",
                        help="instead: the fMRI stage in one process, then as map-reduce on the sequential runner, "
                             "ParallelRunner and a 2-worker Dask LocalCluster, with the decompression floor, in "
                             "the same run, and whether they wrote the same tensor")
    parser.add_argument("--full-size", action="store_true",
                        help="with --runners: the full Sherlock scan, 1,976 TRs x 271,633 voxels (the whole grid) "
                             "per subject (--subjects of them; 17 in the lab)")
    parser.add_argument("--baseline", action="store_true",
                        help=f"also every step with the per-TR model of {PER_TR_MODEL} (a git worktree), in this run, "
                             "and training's epoch time and peak memory as ratios against it")
    args = parser.parse_args()

    n_voxels = fmri_bench.N_VOXELS
    if args.full_size:
        args.trs, n_voxels = 1976, int(np.prod(fmri_bench.GRID))
    folder = args.data / (f"sherlock_{args.subjects}x{args.trs}" + ("_full" if args.full_size else ""))
    print(f"data: {args.subjects} subjects x {args.trs} TRs x {n_voxels:,} voxels ({folder})", flush=True)
    subjects, mask = fmri_bench.make_data(folder, args.subjects, args.trs, n_voxels)
    movie, table = write_movie_files(folder, args.trs, args.segments)
    print(f"  movie {movie.stat().st_size / 1e6:.0f} MB, {args.segments} annotation segments", flush=True)

    kedro = str(Path(sys.executable).parent / "kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    env.pop("GIBLET_PROJECT_ROOT", None)
    with tempfile.TemporaryDirectory(prefix="giblet-lab-bench-") as tmp:
        project, _ = fmri_bench.giblet_project(subjects, mask, Path(tmp) / "project")
        spec = project / "lab.yml"
        lab_spec(spec, subjects, mask, movie, table)
        if args.runners:
            compare_runners(kedro, project, spec, env, subjects)
            return
        outcome = run_steps(kedro, project, spec, env)
        if args.baseline:
            outcome_before = baseline_steps(kedro, Path(tmp), subjects, mask, movie, table, env)
    print_outcome(outcome)
    if args.baseline:
        print(f"\nbaseline: the same steps with the per-TR model of {PER_TR_MODEL} (its own code and catalog), "
              "in this run")
        print_outcome(outcome_before)
        print_comparison(outcome, outcome_before)


def run_steps(kedro: str, project: Path, spec: Path, env: dict, extra: tuple[str, ...] = ()) -> dict:
    """Every step of :data:`STEPS`, each one ``kedro run`` measured; the training history,
    the verification report, the cache sizes and the trained model's parameter count."""
    import torch

    rows = []
    for what, arguments in STEPS:
        print(f"- {what} ...", flush=True)
        measured = fmri_bench.measured([kedro, "run", *arguments, *extra, "--params", f"experiment={spec}"],
                                       env=env, cwd=project)
        rows.append((what, measured))
        print(f"  {measured['wall_s']:.1f} s, peak RSS {measured['peak_rss_gb']:.2f} GB", flush=True)
    history = json.loads(next(project.glob("data/06_models/train/*/run/history.json")).read_text())
    report = json.loads(next(project.glob("data/08_reporting/verify/*/verification_report.json")).read_text())
    weights = torch.load(next(project.glob("data/06_models/train/*/model_final.pt")), weights_only=True)
    caches: dict[str, int] = {}
    for path in project.glob("data/0[45]_*/**/*.npy"):
        stage = path.relative_to(project / "data").parts[1]
        caches[stage] = caches.get(stage, 0) + path.stat().st_size
    return {"rows": rows, "history": history, "report": report, "caches": caches,
            "parameters": int(sum(t.numel() for t in weights.values()))}


def baseline_steps(kedro: str, tmp: Path, subjects: dict[str, Path], mask: Path, movie: Path, table: Path,
                   env: dict) -> dict:
    """:func:`run_steps` with the code of :data:`PER_TR_MODEL` (a git worktree, its own
    catalog) in a project of its own, on the same files."""
    import subprocess

    before = checkout_before(tmp / "before", PER_TR_MODEL)
    if before is None:
        raise SystemExit(f"--baseline needs a git clone (to check out {PER_TR_MODEL})")
    try:
        project, _ = fmri_bench.giblet_project(subjects, mask, tmp / "baseline")
        spec = project / "lab.yml"
        lab_spec(spec, subjects, mask, movie, table)
        return run_steps(kedro, project, spec, {**env, "PYTHONPATH": str(before)},
                         (f"--conf-source={before.parent / 'conf'}",))
    finally:
        subprocess.run(["git", "-C", str(fmri_bench.REPO), "worktree", "remove", "--force", str(before.parent)],
                       capture_output=True)


def epoch_figures(history: dict) -> tuple[float, int, float]:
    """The first epoch's seconds, steps per rank and seconds per step."""
    epoch = history["epochs"][0]
    return epoch["seconds"], epoch["batches"], epoch["seconds"] / epoch["batches"]


def print_outcome(outcome: dict) -> None:
    rows, history, report = outcome["rows"], outcome["history"], outcome["report"]
    print(f"\n{'stage':<40}{'wall s':>9}{'peak RSS GB':>13}")
    for what, measured in rows:
        print(f"{what:<40}{measured['wall_s']:>9.1f}{measured['peak_rss_gb']:>13.2f}")
    print(f"{'total':<40}{sum(m['wall_s'] for _, m in rows):>9.1f}{max(m['peak_rss_gb'] for _, m in rows):>13.2f}")
    seconds, steps, per_step = epoch_figures(history)
    print(f"\ntraining: {outcome['parameters'] / 1e6:.1f} M parameters, {history['world_size']} ranks "
          f"({history['device']}, {history['precision']}), {history['train_samples']} samples, batch "
          f"{history['batch_size']} per rank, {steps} steps per rank in {seconds:.1f} s = {per_step:.2f} s per step, "
          f"{history['epochs'][0]['samples_per_s']:.1f} samples/s")
    print(f"verification: {sum(c['pass'] for c in report['checks'])}/{len(report['checks'])} checks pass "
          "(1 epoch of random-weight features: the loss-drop and stimulus checks are not expected to)")
    print("largest caches (MB): " + ", ".join(f"{name} {size / 1e6:.0f}" for name, size in
                                              sorted(outcome["caches"].items(), key=lambda kv: -kv[1])[:5]))


def print_comparison(new: dict, before: dict) -> None:
    """Training against the baseline: epoch seconds and the training step's peak RSS (its
    largest process: a rank), as ratios (target: at most 1.5x the time, no more memory)."""
    def training_rss(outcome: dict) -> float:
        return dict(outcome["rows"])["training, 1 epoch, 2 gloo ranks"]["peak_rss_gb"]

    epoch_new, epoch_before = epoch_figures(new["history"])[0], epoch_figures(before["history"])[0]
    print(f"\n{'training, 1 epoch, 2 gloo ranks':<36}{'this code':>12}{'baseline':>12}{'ratio':>8}")
    for what, a, b in (("seconds per epoch", epoch_new, epoch_before),
                       ("peak RSS, largest rank, GB", training_rss(new), training_rss(before)),
                       ("parameters, M", new["parameters"] / 1e6, before["parameters"] / 1e6)):
        print(f"{what:<36}{a:>12.2f}{b:>12.2f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()

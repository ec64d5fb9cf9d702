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


def compare_runners(kedro: str, project: Path, spec: Path, env: dict) -> None:
    """The stimulus stage with the project's sequential runner, then with ParallelRunner
    (one process per core), each recomputing everything; same caches, bitwise."""
    fmri_bench.measured([kedro, "run", "--pipelines=fmri", "--params", f"experiment={spec}"], env=env, cwd=project)
    rows, written = {}, {}
    for name, extra in (("sequential (LockingRunner)", []), ("ParallelRunner (2 processes)", ["--runner=ParallelRunner"])):
        print(f"- stimulus stage, {name} ...", flush=True)
        rows[name] = fmri_bench.measured([kedro, "run", "--pipelines=stimulus", "--recompute", *extra, "--params",
                                          f"experiment={spec}"], env=env, cwd=project)
        written[name] = {path: path.read_bytes() for path in project.glob("data/0[45]_*/*/*/*/values.npy")}
    first, second = written.values()
    same = first.keys() == second.keys() and all(first[p] == second[p] for p in first)
    base = next(iter(rows.values()))
    print(f"\n{'stimulus stage (video, audio, text, HRF, alignment)':<54}{'wall s':>9}{'peak RSS GB':>13}{'wall ratio':>12}")
    for name, measured in rows.items():
        print(f"{name:<54}{measured['wall_s']:>9.1f}{measured['peak_rss_gb']:>13.2f}"
              f"{measured['wall_s'] / base['wall_s']:>12.2f}")
    print(f"same caches, bitwise: {same} ({len(first)} arrays)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=fmri_bench.REPO / "data" / "bench")
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument("--trs", type=int, default=946)
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--runners", action="store_true",
                        help="instead: the stimulus stage (4 extractors, HRF, alignment) sequentially and with "
                             "Kedro's ParallelRunner, in the same run, and whether they wrote the same caches")
    args = parser.parse_args()

    folder = args.data / f"sherlock_{args.subjects}x{args.trs}"
    print(f"data: {args.subjects} subjects x {args.trs} TRs x {fmri_bench.N_VOXELS:,} voxels ({folder})", flush=True)
    subjects, mask = fmri_bench.make_data(folder, args.subjects, args.trs)
    movie, table = write_movie_files(folder, args.trs, args.segments)
    print(f"  movie {movie.stat().st_size / 1e6:.0f} MB, {args.segments} annotation segments", flush=True)

    kedro = str(Path(sys.executable).parent / "kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    env.pop("GIBLET_PROJECT_ROOT", None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="giblet-lab-bench-") as tmp:
        project, _ = fmri_bench.giblet_project(subjects, mask, Path(tmp) / "project")
        spec = project / "lab.yml"
        lab_spec(spec, subjects, mask, movie, table)
        if args.runners:
            compare_runners(kedro, project, spec, env)
            return
        for what, arguments in STEPS:
            print(f"- {what} ...", flush=True)
            measured = fmri_bench.measured([kedro, "run", *arguments, "--params", f"experiment={spec}"],
                                           env=env, cwd=project)
            rows.append((what, measured))
            print(f"  {measured['wall_s']:.1f} s, peak RSS {measured['peak_rss_gb']:.2f} GB", flush=True)
        history_file = next(project.glob("data/06_models/train/*/run/history.json"))
        history = json.loads(history_file.read_text())
        report = json.loads(next(project.glob("data/08_reporting/verify/*/verification_report.json")).read_text())
        caches: dict[str, int] = {}
        for path in project.glob("data/0[45]_*/**/*.npy"):
            stage = path.relative_to(project / "data").parts[1]
            caches[stage] = caches.get(stage, 0) + path.stat().st_size

    epoch = history["epochs"][0]
    print(f"\n{'stage':<40}{'wall s':>9}{'peak RSS GB':>13}")
    for what, measured in rows:
        print(f"{what:<40}{measured['wall_s']:>9.1f}{measured['peak_rss_gb']:>13.2f}")
    print(f"{'total':<40}{sum(m['wall_s'] for _, m in rows):>9.1f}{max(m['peak_rss_gb'] for _, m in rows):>13.2f}")
    print(f"\ntraining: {history['world_size']} ranks ({history['device']}, {history['precision']}), "
          f"{history['train_samples']} samples, batch {history['batch_size']} per rank, "
          f"{epoch['batches']} steps per rank in {epoch['seconds']:.1f} s = {epoch['seconds'] / epoch['batches']:.2f} "
          f"s per step, {epoch['samples_per_s']:.1f} samples/s")
    print(f"verification: {sum(c['pass'] for c in report['checks'])}/{len(report['checks'])} checks pass "
          "(1 epoch of random-weight features: the loss-drop and stimulus checks are not expected to)")
    print("largest caches (MB): " + ", ".join(f"{name} {size / 1e6:.0f}" for name, size in
                                              sorted(caches.items(), key=lambda kv: -kv[1])[:5]))


if __name__ == "__main__":
    main()

"""fMRI stage vs the lab's way, at the lab's sizes, in the same run.

Data: 5 subjects x 946 TRs in a 61x73x61 grid (3 mm), 83,138 voxels inside the brain
(zero outside), int16 with scale factors, gzipped: the sizes of the lab's Sherlock runs.

- baseline ("the lab's way"): per subject ``nib.load(...).get_fdata()``, mask, z-score
  with train-TR stats, keep; then stack and average.
- giblet: ``kedro run --pipelines=fmri --recompute`` on a spec naming the same files and
  mask: Kedro start-up, validation, both streaming passes and the writes included.

With ``--clean``, both sides also clean every run before the z-score (detrend, a
0.008 Hz Butterworth high-pass and 6 motion regressors per subject): the baseline with
``nilearn.signal.clean`` on the whole array, giblet through ``fmri.clean`` (the same
cleaning, streamed).

Each is measured in a fresh process (wall time, peak RSS of that process); the two
results are compared for equality. Usage::

    python benchmarks/fmri_bench.py [--subjects 5] [--trs 946] [--repeats 1] [--clean] [--full-size]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip

REPO = Path(__file__).resolve().parents[1]
GRID = (61, 73, 61)
N_VOXELS = 83_138
TR = 1.5
VAL, TEST = 0.1, 0.1
GAP = 10  # split.gap_trs: auto at TR 1.5 s (15 s)
HIGH_PASS_HZ = 0.008


# ------------------------------------------------------------------------------ data
def brain_mask(grid=GRID, n_voxels=N_VOXELS) -> np.ndarray:
    """The ``n_voxels`` grid points nearest the centre in ellipsoid distance (C order ties)."""
    axes = [(np.arange(n) - (n - 1) / 2) / (n / 2) for n in grid]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    distance = (x / 0.9) ** 2 + (y / 0.95) ** 2 + (z / 0.85) ** 2
    order = np.argsort(distance.ravel(), kind="stable")[:n_voxels]
    mask = np.zeros(distance.size, bool)
    mask[order] = True
    return mask.reshape(grid)


def write_subject(path: Path, mask: np.ndarray, n_trs: int, seed: int) -> None:
    """Stream a scanner-like int16 run with scale factors straight into gzip."""
    rng = np.random.default_rng(seed)
    header = nib.Nifti1Header()
    header.set_data_shape((*mask.shape, n_trs))
    header.set_data_dtype(np.int16)
    header.set_zooms((3.0, 3.0, 3.0, TR))
    header.set_xyzt_units("mm", "sec")
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -1.5 * (np.asarray(mask.shape) - 1)
    header.set_qform(affine, 1)
    header.set_sform(affine, 1)
    header.set_slope_inter(0.05, 0.0)  # stored code * 0.05 = scanner units
    header["vox_offset"] = 352
    flat_mask = mask.ravel(order="F")
    baseline = rng.uniform(600, 1400, size=int(flat_mask.sum()))
    shared = np.random.default_rng(12345)  # a response shared by all subjects
    tmp = path.with_suffix(".partial")
    with igzip.open(tmp, "wb", compresslevel=1) as handle:
        handle.write(header.binaryblock)
        handle.write(b"\0" * (352 - len(header.binaryblock)))
        volume = np.zeros(flat_mask.size, np.int16)
        for _ in range(n_trs):
            signal = baseline + 15 * shared.standard_normal(baseline.size) + 15 * rng.standard_normal(baseline.size)
            volume[flat_mask] = np.round(signal / 0.05).astype(np.int16)
            handle.write(volume.tobytes())
    tmp.replace(path)


def make_data(folder: Path, n_subjects: int, n_trs: int, n_voxels: int = N_VOXELS) -> tuple[dict[str, Path], Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mask = brain_mask(n_voxels=n_voxels)
    mask_path = folder / "mask.nii.gz"
    if not mask_path.exists():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])), mask_path)
    paths = {}
    for index in range(1, n_subjects + 1):
        path = folder / f"sub-{index:02d}_bold.nii.gz"
        if not path.exists():
            started = time.perf_counter()
            write_subject(path, mask, n_trs, seed=index)
            print(f"  generated {path.name} ({path.stat().st_size / 1e6:.0f} MB) in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        paths[f"{index:02d}"] = path
    # The mask's affine must match the runs' (qform/sform written above).
    run_affine = nib.load(paths["01"]).affine
    if not np.allclose(nib.load(mask_path).affine, run_affine):
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), run_affine), mask_path)
    return paths, mask_path


# ------------------------------------------------------------------- the two methods
def motion_table(path: Path, n_trs: int, seed: int) -> Path:
    """Six random-walk motion parameters, one row per volume (SPM's rp_*.txt layout)."""
    if not path.exists():
        np.savetxt(path, np.random.default_rng(seed).standard_normal((n_trs, 6)).cumsum(0) * 0.05)
    return path


def baseline(paths: list[str], mask_path: str, out: str, confounds: list[str] | None = None,
             accumulate: bool = False) -> None:
    """The lab's way: whole-file float64 loads, (nilearn cleaning), z-score, stack, average.

    ``accumulate``: keep a running sum instead of the stack (the plain numpy way that
    still fits in memory at full size, where the lab's stack would need 73 GB).
    """
    mask = nib.load(mask_path).get_fdata() > 0
    zscored = []
    total = None
    for index, path in enumerate(paths):
        data = nib.load(path).get_fdata()[mask].T  # (n_trs, n_voxels) float64
        n_val, n_test = round(VAL * data.shape[0]), round(TEST * data.shape[0])
        n_train = data.shape[0] - n_val - n_test - 2 * GAP  # train | gap | val | gap | test, as the spec's default
        if confounds:  # each block on its own, as the stage does (no val or test TR reaches a training one)
            from nilearn import signal

            table = np.loadtxt(confounds[index])
            for block in (slice(0, n_train), slice(n_train, n_train + GAP + n_val), slice(n_train + GAP + n_val, None)):
                data[block] = signal.clean(data[block], detrend=True, standardize=None, confounds=table[block],
                                           high_pass=HIGH_PASS_HZ, t_r=TR)
        mean, std = data[:n_train].mean(0), data[:n_train].std(0, ddof=1)
        data -= mean
        data /= std
        if accumulate:
            total = data if total is None else total + data
        else:
            zscored.append(data)
        del data
    average = (total / len(paths) if accumulate else np.stack(zscored).mean(0)).astype(np.float32)
    np.save(out, average)


def measured(command: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``command`` in a fresh process; wall seconds and its peak RSS (GB)."""
    wrapper = [sys.executable, __file__, "--measure-child", json.dumps(command)]
    result = subprocess.run(wrapper, capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"benchmark command failed: {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_child(command: list[str]) -> None:
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-3000:] + completed.stderr[-3000:])
        raise SystemExit(completed.returncode)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"wall_s": wall, "peak_rss_gb": peak_kb / 1024**2}))


def giblet_project(paths: dict[str, Path], mask_path: Path, workdir: Path,
                   confounds: dict[str, Path] | None = None) -> tuple[Path, Path]:
    """A throwaway copy of the project whose spec names the benchmark files."""
    workdir.mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", workdir)
    shutil.copytree(REPO / "conf" / "base", workdir / "conf" / "base")
    (workdir / "conf" / "local").mkdir()
    (workdir / "src").mkdir()
    spec = workdir / "bench.yml"
    subjects = "\n".join(f'    "{sid}": {path}' for sid, path in paths.items())
    spec.write_text(
        f"name: bench\nfmri:\n  subjects:\n{subjects}\n  mask: {mask_path}\n  tr: {TR}\n"
        f"  zscore: {{ddof: 1}}\n  mode: cross_subject\n  split: {{val: {VAL}, test: {TEST}}}\n"
    )
    if confounds:
        files = ", ".join(f'"{sid}": {path}' for sid, path in confounds.items())
        spec.write_text(spec.read_text() + f"  clean: {{detrend: true, high_pass_hz: {HIGH_PASS_HZ}, "
                                           f"confounds: {{files: {{{files}}}}}}}\n")
    return workdir, spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument("--trs", type=int, default=946)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method; the best is kept")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--clean", action="store_true", help="both sides clean each run (nilearn) first")
    parser.add_argument("--full-size", action="store_true",
                        help="the full Sherlock size: 17 subjects x 1,976 TRs x 271,633 voxels (the whole 61x73x61 "
                             "grid); the baseline keeps a running sum (its stack would need 73 GB)")
    parser.add_argument("--measure-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_child:
        measure_child(json.loads(args.measure_child))
        return

    n_voxels = N_VOXELS
    if args.full_size:
        args.subjects, args.trs, n_voxels = 17, 1976, int(np.prod(GRID))
    folder = args.data / (f"sherlock_{args.subjects}x{args.trs}" + ("_full" if args.full_size else ""))
    print(f"data: {args.subjects} subjects x {args.trs} TRs x {n_voxels:,} voxels in {GRID}, int16 + scale, "
          f"gzip ({folder})", flush=True)
    paths, mask_path = make_data(folder, args.subjects, args.trs, n_voxels)
    print(f"  on disk: {sum(p.stat().st_size for p in paths.values()) / 1e9:.1f} GB", flush=True)
    confounds = {sid: motion_table(folder / f"rp_{sid}.txt", args.trs, i) for i, sid in enumerate(paths)} \
        if args.clean else None
    if args.clean:
        print(f"cleaning: detrend, {HIGH_PASS_HZ} Hz high-pass, 6 motion regressors per subject", flush=True)

    with tempfile.TemporaryDirectory(prefix="giblet-bench-") as tmp:
        tmp = Path(tmp)
        baseline_out = tmp / "baseline.npy"
        project, spec = giblet_project(paths, mask_path, tmp / "project", confounds)
        kedro = str(Path(sys.executable).parent / "kedro")
        env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
        env.pop("GIBLET_PROJECT_ROOT", None)
        job = {"paths": [str(p) for p in paths.values()], "mask": str(mask_path), "out": str(baseline_out),
               "confounds": [str(p) for p in confounds.values()] if confounds else None,
               "accumulate": bool(args.full_size)}
        baseline_command = [
            sys.executable, "-c",
            "import json, sys; sys.path.insert(0, sys.argv[1]); import fmri_bench as b; "
            "job = json.loads(sys.argv[2]); b.baseline(job['paths'], job['mask'], job['out'], job['confounds'], job['accumulate'])",
            str(Path(__file__).parent), json.dumps(job),
        ]
        runs = {"baseline (lab's way)": [], "giblet fmri stage (kedro run)": []}
        for _ in range(args.repeats):
            runs["baseline (lab's way)"].append(measured(baseline_command, env=env))
            runs["giblet fmri stage (kedro run)"].append(measured(
                [kedro, "run", "--pipelines=fmri", "--recompute", "--params", f"experiment={spec}"], env=env, cwd=project))

        best = {name: min(r, key=lambda m: m["wall_s"]) | {"peak_rss_gb": min(m["peak_rss_gb"] for m in r)}
                for name, r in runs.items()}
        ours = np.load(next(project.glob("data/05_model_input/fmri_tensor/*/fmri_train.npy")))
        reference = np.load(baseline_out)
        max_diff = float(np.abs(ours - reference).max())

    base = best["baseline (lab's way)"]
    print(f"\n{'method':<32}{'wall s':>9}{'peak RSS GB':>13}{'wall ratio':>12}{'RSS ratio':>11}")
    for name, m in best.items():
        print(f"{name:<32}{m['wall_s']:>9.1f}{m['peak_rss_gb']:>13.2f}"
              f"{m['wall_s'] / base['wall_s']:>12.2f}{m['peak_rss_gb'] / base['peak_rss_gb']:>11.2f}")
    ours_m = best["giblet fmri stage (kedro run)"]
    print(f"\nsame result: max |giblet - baseline| = {max_diff:.2e} (float32 tensor {ours.shape})")
    print(f"targets: wall ratio <= 0.60 ({'met' if ours_m['wall_s'] <= 0.6 * base['wall_s'] else 'MISSED'}), "
          f"RSS ratio <= 0.35 ({'met' if ours_m['peak_rss_gb'] <= 0.35 * base['peak_rss_gb'] else 'MISSED'})")


if __name__ == "__main__":
    main()

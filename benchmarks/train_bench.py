"""Training node vs a plain torch loop: same model, data, batch size, one process.

- node: ``giblet_kedro.training.ddp.launch`` on one rank (spawned process, DDP wrapper,
  DistributedSampler, memory-mapped dataset, loss bookkeeping, checkpoints);
- plain: the same model class, seed, losses, batch size and recipe (AdamW, the spec's
  gradient clipping and warmup/cosine schedule) over in-memory tensors with a shuffling
  DataLoader, in this process. What remains in the ratio is the pipeline's own cost:
  process launch, sampler, memory-mapped reads, loss bookkeeping, checkpoints.

Samples/s are steady state (the first epoch is warm-up and not counted). Target: the
node reaches at least 0.95 of the plain loop. Usage (the job file comes from
``kedro giblet job``, default: the demo experiment's)::

    python benchmarks/train_bench.py [--job data/06_models/train/<fp>/run/job.json] [--epochs 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from giblet_kedro.models.autoencoder import build_model
from giblet_kedro.training.data import TrDataset
from giblet_kedro.training.ddp import launch, lr_factor, warmup_epochs
from giblet_kedro.training.job import TrainJob
from giblet_kedro.training.losses import ModalityStats, modality_losses, torch_stats, weighted_total

REPO = Path(__file__).resolve().parents[1]


def plain_loop(job: TrainJob, epochs: int) -> float:
    """Steady-state samples/s of a textbook loop over in-memory tensors."""
    dataset = TrDataset(job.paths, np.asarray(job.train_rows), job.mode, job.stats, job.shapes.audio_is_codes)
    stats = torch_stats(job.stats)
    tensors = dataset.__getitems__(list(range(len(dataset))))  # everything in memory up front
    torch.manual_seed(job.seed)
    model = build_model(job.shapes, job.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.train["lr"], weight_decay=job.train["weight_decay"])
    loader = DataLoader(list(range(len(dataset))), batch_size=job.train["batch_size"], shuffle=True)
    warmup, total = warmup_epochs(job.train) * len(loader), epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
    samples, seconds = 0, 0.0
    for epoch in range(epochs):
        started = time.perf_counter()
        for index in loader:
            batch = {key: value[index] for key, value in tensors.items()}
            outputs = model({name: batch[name] for name in job.shapes.present()})
            loss = weighted_total(modality_losses(outputs, batch, stats, job.loss["normalize"],
                                                  job.shapes.audio_is_codes), job.loss["weights"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if job.train.get("grad_clip"):  # the spec's recipe: clipping and schedule, as the node does
                torch.nn.utils.clip_grad_norm_(model.parameters(), job.train["grad_clip"])
            optimizer.step()
            scheduler.step()
        if epoch > 0:
            samples += len(dataset)
            seconds += time.perf_counter() - started
    return samples / seconds


def node_loop(job: TrainJob, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        history = launch(dataclasses.replace(job, run_dir=run_dir, world_size=1, backend="gloo", device_type="cpu", train={
            **job.train, "epochs": epochs, "checkpoint_every": epochs, "early_stop_patience": None}))
    steady = history["epochs"][1:]
    return sum(history["train_samples"] for _ in steady) / sum(e["seconds"] for e in steady)


def lab_size_step(device: str, steps: int = 5) -> tuple[float, float]:
    """Seconds per training step and peak GPU memory (GB) at the lab's sizes: video
    3x3x90x160, 4 codebooks x 112 frames, 512-d text, 83,138 voxels, the default voxel
    bottleneck (rank 256), hidden 1024, batch 2; bf16 autocast on GPU, AdamW, all losses."""
    from giblet_kedro.models.autoencoder import ModalityShapes

    shapes = ModalityShapes(video=(3, 3, 90, 160), audio=(4, 112), audio_is_codes=True, text=(512,), n_voxels=83_138)
    torch.manual_seed(0)
    model = build_model(shapes, {"bottleneck": "voxels", "rank": None, "hidden": 1024, "dropout": 0.3}).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    unit = lambda shape: ModalityStats(mean=np.zeros(shape), std=np.ones(shape))  # noqa: E731
    stats = torch_stats({"fmri": unit((83_138,)), "video": unit((1, 3, 90, 160)), "text": unit((512,)),
                         "audio": ModalityStats(entropy=np.full(4, 6.0), marginal=np.full((4, 1024), 1 / 1024))},
                        device)
    batch = {"video": torch.randn(2, 3, 3, 90, 160), "audio": torch.randint(0, 1024, (2, 4, 112)),
             "text": torch.randn(2, 512), "fmri": torch.randn(2, 83_138)}
    batch = {k: v.to(device) for k, v in batch.items()} | {
        f"{k}_valid": torch.ones(2, dtype=torch.bool, device=device) for k in ("fmri", "video", "audio", "text")}
    times = []
    for _ in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            outputs = model({k: batch[k] for k in shapes.present()})
        loss = weighted_total(modality_losses(outputs, batch, stats, "variance", True), {})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")
    return float(np.median(times[1:])), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lab-step", action="store_true", help="also time one step at the lab's sizes on CPU")
    args = parser.parse_args()
    candidates = glob.glob(str(REPO / "data/06_models/train/*/run/job.json"))
    job_file = args.job or (max(candidates, key=os.path.getmtime) if candidates else None)
    if job_file is None:
        raise SystemExit("no job file: run `kedro run --pipelines=train` (or `kedro giblet job`) first, or give --job")
    job = TrainJob.from_json(Path(job_file).read_text())
    torch.set_num_threads(torch.get_num_threads())
    node = max(node_loop(job, args.epochs) for _ in range(args.repeats))
    plain = max(plain_loop(job, args.epochs) for _ in range(args.repeats))
    print(f"\njob: {job_file}\n{len(job.train_rows)} train TRs, mode {job.mode}, batch {job.train['batch_size']}, "
          f"modalities {job.shapes.present()}, {job.shapes.n_voxels} voxels; best of {args.repeats}, "
          f"epochs 2..{args.epochs}")
    print(f"{'loop':<36}{'samples/s':>12}")
    print(f"{'training node (launch, 1 rank)':<36}{node:>12.1f}")
    print(f"{'plain torch loop (in memory)':<36}{plain:>12.1f}")
    ratio = node / plain
    print(f"ratio node/plain: {ratio:.3f} (target >= 0.95: {'met' if ratio >= 0.95 else 'MISSED'})")
    if torch.cuda.is_available() or args.lab_step:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        seconds, peak = lab_size_step(device)
        print(f"lab sizes, batch 2, one step on {device}: {seconds:.3f} s, peak GPU memory {peak:.1f} GB "
              f"(targets on a GPU: <= 0.5 s, <= 40 GB; the lab's model: 5 s, 44-46 GB)")


if __name__ == "__main__":
    main()

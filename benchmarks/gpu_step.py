"""One training step of the default model at the lab's sizes, with torch and numpy alone.

For a GPU machine that has torch but not Kedro (``PYTHONPATH=src python
benchmarks/gpu_step.py``): the project's model (``models.autoencoder``) and losses
(``training.losses``) on synthetic standardized batches of the lab's shapes (83,138
voxels; video 3 frames of 3x90x160; EnCodec 3 kbps codes, 4 codebooks x 112 frames; CLIP
512), AdamW, bf16 autocast on CUDA (fp32 master weights), DDP over NCCL when started
under ``torchrun`` (gloo on CPU). Prints the median step time after warm-up and the peak
GPU memory of rank 0 (targets at the lab's sizes: <= 0.5 s and <= 40 GB per step of
``--batch`` samples per GPU; the lab measured 5 s and 44-46 GB).

    PYTHONPATH=src python benchmarks/gpu_step.py [--batch 2] [--steps 20] [--device cuda]
    PYTHONPATH=src torchrun --nproc-per-node 8 benchmarks/gpu_step.py --batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist

from giblet_kedro.models.autoencoder import ModalityShapes, build_model
from giblet_kedro.training.losses import CODEBOOK_SIZE, ModalityStats, modality_losses, torch_stats, weighted_total

LAB = {"voxels": 83_138, "video": (3, 3, 90, 160), "codes": (4, 112), "text": (512,)}
DEFAULT_MODEL = {"bottleneck": "voxels", "rank": None, "hidden": 1024, "dropout": 0.3}


def lab_shapes(voxels: int) -> ModalityShapes:
    return ModalityShapes(video=LAB["video"], audio=LAB["codes"], audio_is_codes=True, text=LAB["text"],
                          n_voxels=voxels)


def unit_stats(shapes: ModalityShapes) -> dict[str, ModalityStats]:
    """Statistics of already standardized data (mean 0, std 1; codes uniform)."""
    entropy = np.full(shapes.audio[0], np.log(CODEBOOK_SIZE))
    return {"fmri": ModalityStats(mean=np.zeros(shapes.n_voxels), std=np.ones(shapes.n_voxels)),
            "video": ModalityStats(mean=np.zeros((1, *shapes.video[1:])), std=np.ones((1, *shapes.video[1:]))),
            "audio": ModalityStats(entropy=entropy, marginal=np.full((shapes.audio[0], CODEBOOK_SIZE), 1 / CODEBOOK_SIZE)),
            "text": ModalityStats(mean=np.zeros(shapes.text), std=np.ones(shapes.text))}


def batch(shapes: ModalityShapes, size: int, device: torch.device, generator: torch.Generator) -> dict:
    def normal(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    flags = torch.ones(size, dtype=torch.bool, device=device)
    return {"fmri": normal(size, shapes.n_voxels), "video": normal(size, *shapes.video),
            "audio": torch.randint(0, CODEBOOK_SIZE, (size, *shapes.audio), generator=generator).to(device),
            "text": normal(size, *shapes.text),
            **{f"{name}_valid": flags for name in ("fmri", "video", "audio", "text")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2, help="samples per GPU (the spec's train.batch_size)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--voxels", type=int, default=LAB["voxels"])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and args.device != "cpu"
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    use_bf16 = cuda and args.precision == "bf16"

    shapes = lab_shapes(args.voxels)
    torch.manual_seed(0)
    module = build_model(shapes, DEFAULT_MODEL).to(device)
    model = module if not distributed else torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=1e-5)
    stats = torch_stats(unit_stats(shapes), device)
    generator = torch.Generator().manual_seed(rank)
    data = batch(shapes, args.batch, device, generator)
    times = []
    for step in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            outputs = model({name: data[name] for name in shapes.present()})
        loss = weighted_total(modality_losses(outputs, data, stats, "variance", True), {"fmri": 2.0})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "world_size": world,
              "backend": dist.get_backend() if distributed else None, "precision": "bf16" if use_bf16 else "fp32",
              "batch_per_rank": args.batch, "voxels": args.voxels,
              "parameters_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 1),
              "step_s_median": round(statistics.median(times), 4), "step_s_max": round(max(times), 4),
              "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if cuda else None,
              "loss": round(float(loss.detach()), 4), "torch": torch.__version__}
    if rank == 0:
        print(json.dumps(result))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""One training step of the default model at the lab's sizes, with torch and numpy alone.

For a GPU machine that has torch but not Kedro (``PYTHONPATH=src python
benchmarks/gpu_step.py``): the project's model (``models.autoencoder``: per-TR encoders,
the temporal module over windows of TRs, decoders) and losses (``training.losses``) on
synthetic standardized windows of the lab's shapes (83,138 voxels; TR 1.5 s, 21 s of
context; video 3 frames of 3x90x160; EnCodec 3 kbps codes, 4 codebooks x 112 frames;
CLIP 512), AdamW, bf16 autocast on CUDA (fp32 master weights), DDP over NCCL when
started under ``torchrun`` (gloo on CPU). Prints the median step time after warm-up and
the peak GPU memory of rank 0 (and its peak RSS), per step of ``--batch`` windows of
``--window`` TRs per GPU (the first ``context - 1`` TRs of a window are context only:
encoded and filtered, never decoded, as in training).

    PYTHONPATH=src python benchmarks/gpu_step.py [--batch 1] [--window 64] [--steps 20] [--device cuda]
    PYTHONPATH=src torchrun --nproc-per-node 8 benchmarks/gpu_step.py --batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist

from giblet_kedro.models.autoencoder import ModalityShapes, build_model
from giblet_kedro.training.losses import CODEBOOK_SIZE, ModalityStats, modality_losses, torch_stats, weighted_total

LAB = {"voxels": 83_138, "video": (3, 3, 90, 160), "codes": (4, 112), "text": (512,), "tr": 1.5}
DEFAULT_MODEL = {"bottleneck": "voxels", "rank": None, "hidden": 1024, "dropout": 0.3, "temporal": "lags",
                 "context_s": 21.0, "lag_basis": 6}


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


def batch(shapes: ModalityShapes, size: int, window: int, context: int, device: torch.device,
          generator: torch.Generator) -> dict:
    """``size`` windows of ``window`` TRs: inputs at every TR, targets counted after the context."""
    def normal(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    counted = torch.zeros(size, window, dtype=torch.bool)
    counted[:, context - 1:] = True
    counted = counted.to(device)
    codes = torch.randint(0, CODEBOOK_SIZE, (size, window, *shapes.audio), generator=generator).to(device)
    inputs = {"video": normal(size, window, *shapes.video), "audio": codes, "text": normal(size, window, *shapes.text)}
    return {"inputs": inputs, "fmri": normal(size, window, shapes.n_voxels), **inputs,
            **{f"{name}_valid": counted for name in ("fmri", "video", "audio", "text")}}


def flat(data: dict, outputs: dict, first: int = 0) -> tuple[dict, dict]:
    """(B, T, ...) -> (B * T', ...) for the per-TR losses: the targets from TR ``first``
    on, where the outputs (decoded after the window's context) start."""
    names = ("fmri", "video", "audio", "text")
    targets = {name: data[name][:, first:].reshape(-1, *data[name].shape[2:]) for name in names}
    targets |= {f"{name}_valid": data[f"{name}_valid"][:, first:].reshape(-1) for name in names}
    return {name: outputs[name].reshape(-1, *outputs[name].shape[2:]) for name in names}, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="windows per GPU (the spec's train.batch_size)")
    parser.add_argument("--window", type=int, default=64, help="TRs per window (the spec's train.window_trs)")
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
    module = build_model(shapes, DEFAULT_MODEL, LAB["tr"]).to(device)
    context = module.n_lags
    model = module if not distributed else torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if cuda else None, gradient_as_bucket_view=True)  # as training
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=1e-5)
    stats = torch_stats(unit_stats(shapes), device)
    generator = torch.Generator().manual_seed(rank)
    data = batch(shapes, args.batch, args.window, context, device, generator)
    times = []
    for step in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)  # the step's order is training's (training/ddp.py)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            outputs = model(data["inputs"], first=context - 1)  # the context is read, not decoded
        loss = weighted_total(modality_losses(*flat(data, outputs, context - 1), stats, "variance", True),
                              {"fmri": 2.0})
        del outputs
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "world_size": world,
              "backend": dist.get_backend() if distributed else None, "precision": "bf16" if use_bf16 else "fp32",
              "windows_per_rank": args.batch, "window_trs": args.window, "context_trs": context,
              "target_trs_per_rank": args.batch * (args.window - context + 1), "voxels": args.voxels,
              "parameters_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 1),
              "step_s_median": round(statistics.median(times), 4), "step_s_max": round(max(times), 4),
              "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if cuda else None,
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),  # KiB -> GiB
              "loss": round(float(loss.detach()), 4), "torch": torch.__version__}
    if rank == 0:
        print(json.dumps(result))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

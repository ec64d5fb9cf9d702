"""DistributedDataParallel training: one process per device, launched from a Kedro node.

- Launch: ``torch.multiprocessing.start_processes`` (spawn) with a file-store rendezvous
  in a temporary folder (no port to collide); if any rank raises, the others are
  terminated and the job fails with that rank's error. Under ``torchrun`` (several
  nodes) :func:`main` joins through ``env://`` instead.
- GPUs: NCCL, bf16 autocast with fp32 master weights. CPU: gloo, fp32.
- Training draws with ``DistributedSampler`` (shuffled per epoch, ``drop_last=False``: it
  pads ranks to equal length); the evaluations (the initial losses, each epoch's
  validation) shard with :class:`ShardSampler` instead, so that every window counts once
  whatever the number of ranks. AdamW, per-step linear warmup then cosine decay, gradient
  clipping.
- Epoch metrics are all-reduced, so every rank takes the same early-stopping decision
  (the lab decided per rank; ranks disagreed and hung).
- Rank 0 alone writes, atomically: ``last.pt`` (everything needed to resume) every
  ``checkpoint_every`` epochs and at the end, ``best.pt`` (best validation loss; never
  overwritten by the final weights), ``final.pt`` and ``history.json``. Checkpoints are
  loaded with ``weights_only=True, mmap=True``: no rank needs a full host copy.
- Each epoch reseeds every RNG from (seed, epoch, rank), so a resumed run repeats the
  uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from giblet_kedro.compute import available_cores
from giblet_kedro.datasets.atomic import atomic_path, check_file
from giblet_kedro.logs import configure_rank_logging
from giblet_kedro.models.autoencoder import build_model
from giblet_kedro.paths import project_root
from giblet_kedro.training import preemption
from giblet_kedro.training.data import INPUT_PREFIX, WindowDataset, identity_collate, plan_windows
from giblet_kedro.training.job import TrainJob, resolve_devices
from giblet_kedro.training.losses import modality_losses, torch_stats, weighted_total
from giblet_kedro.training.selection import selection

log = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """A rank failed; the message carries its error."""


class Preempted(TrainingFailed):
    """Training stopped mid-epoch on request (see :mod:`giblet_kedro.training.preemption`);
    ``last.pt`` holds the position and the next run resumes there."""


PREEMPTED_EXIT = 75  # EX_TEMPFAIL: what a torchrun rank exits with after a requested stop


# ------------------------------------------------------------------------ helpers
class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share of ``n`` samples, ``rank, rank + world, ...``, in order and
    without padding: over the ranks every sample is drawn exactly once, so sums that are
    all-reduced afterwards (losses, correlation sums) are those of one process. (A
    ``DistributedSampler`` repeats samples to give every rank as many, and the repeated
    windows would count twice in the validation r that selects the checkpoint.)"""

    def __init__(self, n: int, world: int, rank: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed_everything(seed: int, epoch: int, rank: int) -> None:
    value = (seed * 1_000_003 + epoch * 1_009 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def warmup_epochs(train: dict) -> int:
    """``train.warmup_epochs``, or by default 10 (fewer when training is shorter)."""
    given = train.get("warmup_epochs")
    return min(10, int(train["epochs"])) if given is None else int(given)


def save_checkpoint(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, device: str = "cpu") -> dict:
    """Memory-mapped, code-free load (safe on untrusted files; no full copy per rank)."""
    return torch.load(path, map_location=device, weights_only=True, mmap=True)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


class LossSums:
    """Per-modality sums of batch losses weighted by the batch's valid samples of that
    modality, and the samples seen; all-reduced over ranks into means."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.samples = 0.0

    def add(self, losses: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            valid = float(batch[f"{name}_valid"].sum())
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach()) * valid
            self.weights[name] = self.weights.get(name, 0.0) + valid
        self.samples += float(batch["fmri"].shape[0])

    def state(self) -> dict:
        return {"sums": dict(self.sums), "weights": dict(self.weights), "samples": self.samples}

    @classmethod
    def from_state(cls, state: dict) -> LossSums:
        sums = cls()
        sums.sums, sums.weights, sums.samples = dict(state["sums"]), dict(state["weights"]), float(state["samples"])
        return sums

    def means(self, weights: dict[str, float], device: torch.device) -> tuple[dict[str, float], float]:
        """({modality: mean, "total": weighted sum}, samples), over every rank."""
        names = sorted(self.sums)
        tensor = torch.tensor([self.sums[n] for n in names] + [self.weights[n] for n in names] + [self.samples],
                              dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(tensor)
        values = tensor.tolist()
        means = {n: values[i] / max(values[len(names) + i], 1.0) for i, n in enumerate(names)}
        means["total"] = sum(weights.get(n, 1.0) * v for n, v in means.items())
        return means, values[-1]


def window_outputs(model, job: TrainJob, batch: dict[str, torch.Tensor]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model on a batch of windows, and the batch's targets at the same TRs: (B, T',
    ...) each, the window's TRs after its context (:func:`plan_windows` puts every target
    there, so the context's TRs are read but never decoded); each window's subject's fMRI
    through its head when the model has heads."""
    first = job.n_lags - 1
    inputs = {name: batch[f"input_{name}"] for name in job.shapes.present()}
    outputs = model(inputs, present=batch["present"], subjects=batch["subject"] if job.n_subjects else None,
                    first=first)
    targets = {name: value if name.startswith(INPUT_PREFIX) or name in ("present", "subject") else value[:, first:]
               for name, value in batch.items()}
    return outputs, targets


def flat_losses(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], job: TrainJob, stats
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each modality's loss over the windows' counted TRs: (B, T, ...) flattened to TRs;
    returns the losses and the flattened batch (for the valid counts)."""
    names = ["fmri", *job.shapes.present()]
    flat_batch = {}
    for name in names:
        flat_batch[name] = batch[name].reshape(-1, *batch[name].shape[2:])
        flat_batch[f"{name}_valid"] = batch[f"{name}_valid"].reshape(-1)
    flat_outputs = {name: outputs[name].reshape(-1, *outputs[name].shape[2:]) for name in names}
    return modality_losses(flat_outputs, flat_batch, stats, job.loss["normalize"], job.shapes.audio_is_codes), \
        flat_batch


class CorrelationSums:
    """Per (subject, voxel) sums of prediction, measurement, their squares and product over
    the counted TRs, all-reduced over ranks: each voxel's Pearson r, every rank alike."""

    def __init__(self, n_subjects: int, n_voxels: int, device: torch.device):
        self.sums = torch.zeros(6, max(n_subjects, 1), n_voxels, dtype=torch.float64, device=device)

    def add(self, prediction: torch.Tensor, measured: torch.Tensor, counted: torch.Tensor,
            subjects: torch.Tensor) -> None:
        """prediction, measured (B, T, V); counted (B, T) bool; subjects (B,)."""
        weight = counted.to(torch.float64).unsqueeze(-1)
        x, y = prediction.to(torch.float64) * weight, measured.to(torch.float64) * weight
        index = subjects.long() if self.sums.shape[1] > 1 else torch.zeros_like(subjects).long()
        for k, part in enumerate((weight.expand_as(x), x, y, x * x, y * y, x * y)):
            self.sums[k].index_add_(0, index, part.sum(1))

    def mean_r(self) -> float:
        """The mean over voxels of each voxel's r (averaged over subjects), all ranks."""
        if dist.is_initialized():
            dist.all_reduce(self.sums)
        n, x, y, xx, yy, xy = self.sums
        n = n.clamp_min(1.0)
        cov = xy / n - (x / n) * (y / n)
        var_x, var_y = xx / n - (x / n) ** 2, yy / n - (y / n) ** 2
        r = cov / torch.sqrt(var_x.clamp_min(1e-12) * var_y.clamp_min(1e-12))
        return float(torch.nan_to_num(r).mean(0).mean())


def _evaluate(model, loader, job: TrainJob, stats, device, autocast, correlate: bool = False) -> dict[str, float]:
    """Mean of each loss component (and the weighted total) over a loader, all ranks;
    with ``correlate``, also ``fmri_r``: the mean voxel r of the predicted fMRI. ``model``
    is the bare module, not its DDP wrapper: with :class:`ShardSampler` ranks can hold
    different numbers of batches, and no forward pass may wait on another rank."""
    model.eval()
    sums = LossSums()
    correlations = CorrelationSums(job.n_subjects, job.shapes.n_voxels, device) if correlate else None
    with torch.no_grad():
        for batch in loader:
            batch = _to_device(batch, device)
            with autocast():
                outputs, batch = window_outputs(model, job, batch)
            losses, flat_batch = flat_losses(outputs, batch, job, stats)
            sums.add(losses, flat_batch)
            if correlations is not None:
                correlations.add(outputs["fmri"], batch["fmri"], batch["fmri_valid"], batch["subject"])
    means = sums.means(job.loss["weights"], device)[0]
    if correlations is not None:
        means["fmri_r"] = correlations.mean_r()
    return means


def _gather_drawn(drawn: list[dict], world: int) -> dict:
    """What every rank drew in epoch 1, counted on each rank and gathered: the windows
    (with ``DistributedSampler``'s padding), the distinct (subject, TR) targets that
    counted, and the batches per rank. The verification compares them with arithmetic
    from the split table and the spec. ``drawn``: per batch, ``windows`` and ``keys``
    (subject << 32 | row of each counted target)."""
    keys = np.concatenate([np.asarray(d["keys"]) for d in drawn]) if drawn else np.zeros(0, np.int64)
    mine = {"windows": int(sum(int(d["windows"]) for d in drawn)), "batches": len(drawn), "keys": keys.tolist()}
    per_rank = [None] * world
    if dist.is_initialized() and world > 1:
        dist.all_gather_object(per_rank, mine)
    else:
        per_rank = [mine]
    every = np.concatenate([np.asarray(r["keys"], dtype=np.int64) for r in per_rank])
    return {"windows": int(sum(r["windows"] for r in per_rank)), "distinct_samples": int(np.unique(every).size),
            "batches_per_rank": [int(r["batches"]) for r in per_rank],
            "subjects": int(np.unique(every >> 32).size)}


def _inject_fault(rank: int, epoch: int, kind: str) -> None:
    """Test hook: fail this rank the way real ranks fail."""
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        while True:
            time.sleep(3600)
    raise RuntimeError(f"rank {rank}: injected failure in epoch {epoch + 1} (test)")


# ------------------------------------------------------------------------- worker
def run_rank(rank: int, job: TrainJob) -> bool:
    """Train on one rank. Joins the process group, trains, writes (rank 0), leaves.
    True when it stopped on request (preempted) before the end."""
    world = job.world_size
    timeout = timedelta(seconds=int(job.train.get("collective_timeout_s", 600)))
    if job.init_method is not None:
        dist.init_process_group(job.backend, init_method=job.init_method, rank=rank, world_size=world,
                                timeout=timeout)
    else:  # torchrun: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the environment
        dist.init_process_group(job.backend, timeout=timeout)
        rank, world = dist.get_rank(), dist.get_world_size()
    try:
        return _train(rank, world, job)
    except RuntimeError as exc:
        if _is_timeout(exc):
            raise RuntimeError(
                f"rank {rank}: no answer from the other ranks within train.collective_timeout_s = "
                f"{timeout.total_seconds():g} s: another rank hangs or died ({str(exc).splitlines()[0][:200]})"
            ) from None
        raise
    finally:
        dist.destroy_process_group()


def _is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def _stop_requested(rank: int, world: int, request: Path, device: torch.device) -> bool:
    """Has a stop been requested? Rank 0 looks; every rank gets the same answer."""
    flag = torch.tensor([1 if rank == 0 and request.exists() else 0], dtype=torch.int32, device=device)
    if world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _rank_position(world: int, sums: LossSums, drawn: list[dict]) -> list[dict]:
    """Every rank's RNG states, partial loss sums and drawn samples, on every rank."""
    mine = {"rng": preemption.rng_state(), "sums": sums.state(),
            "drawn": [{"windows": int(d["windows"]), "keys": torch.from_numpy(np.asarray(d["keys"]))} for d in drawn]}
    if world == 1:
        return [mine]
    ranks: list = [None] * world
    dist.all_gather_object(ranks, mine)
    return ranks


def _train(rank: int, world: int, job: TrainJob) -> bool:
    settings = job.train
    if job.device_type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, available_cores() // world))
    use_bf16 = settings["precision"] == "bf16" and device.type == "cuda"

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    train_set, val_set = (job_windows(job, rows) for rows in (job.train_rows, job.val_rows))
    stats = torch_stats(job.stats, device)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=job.seed, drop_last=False)
    batched = {"batch_size": settings["batch_size"], "collate_fn": identity_collate, "num_workers": 0}
    loader = DataLoader(train_set, sampler=sampler, **batched)
    val_loader = DataLoader(val_set, sampler=ShardSampler(len(val_set), world, rank), **batched)
    initial_loader = DataLoader(train_set, sampler=ShardSampler(len(train_set), world, rank), **batched)

    torch.manual_seed(job.seed)  # identical initial weights on every rank
    module = build_model(job.shapes, job.model, job.tr, job.n_subjects).to(device)
    if job.shapes.audio_is_codes:
        module.set_neutral_codes(job.stats["audio"].mode_codes())
    probe = job.probe or {}
    if probe.get("nonzero_init"):
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter) * float(probe["nonzero_init"]))
    # One rank has nothing to synchronize: skip DDP's gradient buckets and all-reduces.
    # gradient_as_bucket_view: each gradient is a view of DDP's all-reduce buckets instead
    # of a second copy (the model's size again: 0.42 GB at the lab's 104 M parameters)
    model = module if world == 1 else DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    steps_per_epoch, epochs = len(loader), settings["epochs"]
    warmup = warmup_epochs(settings) * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, max(warmup, 1) if warmup else 0, epochs * steps_per_epoch))

    run_dir = Path(job.run_dir)
    request = preemption.request_file(run_dir)
    preemption.install_signal_handler(run_dir)
    if rank == 0:  # a request already served (the stop that led to this run) or left over
        request.unlink(missing_ok=True)
        (run_dir / preemption.MARKER).unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
    history = {"world_size": world, "device": device.type, "precision": "bf16" if use_bf16 else "fp32",
               "train_samples": len(train_set), "val_samples": len(val_set), "batch_size": settings["batch_size"],
               "batches_per_epoch": steps_per_epoch, "epochs": [], "initial": None, "resumed_from_epoch": None}
    start_epoch, best_val, stale = 0, -math.inf, 0  # best_val: the best validation fMRI r
    resume_step, resumed_ranks = 0, None
    damage = check_file(run_dir / "last.pt")
    if damage not in (None, "missing"):
        if rank == 0:
            log.warning("%s: %s; not resuming from it: training starts again from epoch 1",
                        run_dir / "last.pt", damage)
    elif damage is None:
        state = load_checkpoint(run_dir / "last.pt", device="cpu")
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = json.loads(state["history"])
        start_epoch, best_val, stale = int(state["epoch"]) + 1, float(state["best_val"]), int(state["stale"])
        history["resumed_from_epoch"] = start_epoch
        if "in_epoch" in state:  # stopped on request inside epoch start_epoch + 1
            resume_step, resumed_ranks = int(state["in_epoch"]["step"]), state["in_epoch"]["ranks"]
            if len(resumed_ranks) != world:
                raise RuntimeError(f"{run_dir / 'last.pt'} was written by {len(resumed_ranks)} ranks, stopped inside "
                                   f"an epoch; resume it with the same number of ranks (train.devices), not {world}")
            history["resumed_from_step"] = resume_step
        if rank == 0:
            log.info("resuming from %s at epoch %d%s", run_dir / "last.pt", start_epoch + 1,
                     f", step {resume_step + 1}" if resume_step else "")
    elif history["initial"] is None:
        history["initial"] = _evaluate(module, initial_loader, job, stats, device, autocast)

    weights = job.loss["weights"]
    patience = settings.get("early_stop_patience")
    for epoch in range(start_epoch, epochs):
        _seed_everything(job.seed, epoch, rank)
        sampler.set_epoch(epoch)
        model.train()
        sums, started = LossSums(), time.perf_counter()
        drawn: list[dict] = []
        skip = resume_step if epoch == start_epoch else 0
        if skip:  # continue the interrupted epoch: the same sample order from the next step
            batches = iter(DataLoader(train_set, sampler=list(iter(sampler))[skip * settings["batch_size"]:], **batched))
        else:
            batches = iter(loader)  # draws the loader's base seed from torch's RNG
        if skip:  # after that draw: each rank's RNG states (dropout) and partial sums as they were
            mine = resumed_ranks[rank]
            preemption.set_rng_state(mine["rng"])
            sums = LossSums.from_state(mine["sums"])
            drawn = [{"windows": int(d["windows"]), "keys": d["keys"].numpy().copy()} for d in mine["drawn"]]
        # Rank 0 only, and only on a terminal (None: tqdm's own test), not in a batch job's log.
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=True if rank != 0 else None,
                   unit="batch", initial=skip, total=steps_per_epoch)
        for step, batch in enumerate(bar, start=skip):
            if job.crash_at is not None and list(job.crash_at[:2]) == [rank, epoch] and step == 1 \
                    and job.crash_at[2:] != ["preempt"]:
                _inject_fault(rank, epoch, job.crash_at[2] if len(job.crash_at) > 2 else "raise")
            batch = _to_device(batch, device)
            optimizer.zero_grad(set_to_none=True)  # before the forward pass: no gradients held beside its activations
            with autocast():
                outputs, batch = window_outputs(model, job, batch)
            losses, flat_batch = flat_losses(outputs, batch, job, stats)
            del outputs  # the backward pass needs the losses' graph, not the reconstructions themselves
            total = weighted_total(losses, weights)
            total.backward()
            del total
            if probe.get("gradients") and epoch == 0 and step == 0 and rank == 0:
                save_checkpoint({name: p.grad.detach().cpu().clone() for name, p in module.named_parameters()
                                 if p.grad is not None}, run_dir / "grad_step1.pt")
            if settings.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(module.parameters(), settings["grad_clip"])
            optimizer.step()
            scheduler.step()
            sums.add(losses, flat_batch)
            if epoch == 0:  # the windows of this batch and the (subject, TR) targets that counted
                keys = batch["subject"][:, None] * (1 << 32) + batch["row"]
                drawn.append({"windows": int(batch["subject"].shape[0]), "keys": keys[batch["fmri_valid"]].cpu().numpy()})
            if job.crash_at is not None and list(job.crash_at) == [rank, epoch, "preempt"] and step == 1:
                request.touch()  # test hook: a stop requested after the second step
            if step + 1 < steps_per_epoch and _stop_requested(rank, world, request, device):
                ranks = _rank_position(world, sums, drawn)
                if rank == 0:
                    save_checkpoint({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "epoch": epoch - 1, "best_val": best_val,
                                     "stale": stale, "history": json.dumps(history),
                                     "in_epoch": {"step": step + 1, "ranks": ranks}}, run_dir / "last.pt")
                    with atomic_path(run_dir / preemption.MARKER) as tmp:
                        tmp.write_text(json.dumps({"epoch": epoch + 1, "steps_done": step + 1,
                                                   "steps_per_epoch": steps_per_epoch}))
                    request.unlink(missing_ok=True)
                    log.warning("stop requested: stopped after step %d/%d of epoch %d; %s holds the position, the "
                                "next run resumes there", step + 1, steps_per_epoch, epoch + 1, run_dir / "last.pt")
                if world > 1:
                    dist.barrier()
                return True
        seconds = time.perf_counter() - started
        if epoch == 0:
            history["epoch1_drawn"] = _gather_drawn(drawn, world)
        train_means, count = sums.means(weights, device)
        if len(val_set):
            val_means = _evaluate(module, val_loader, job, stats, device, autocast, correlate=True)
            score = val_means.pop("fmri_r")
        else:  # nothing to select on: the latest epoch is kept
            val_means, score = train_means, float(epoch)
        record = {"epoch": epoch + 1, "train": train_means, "val": val_means, "val_fmri_r": score if len(val_set)
                  else None, "lr": scheduler.get_last_lr()[0], "samples_per_s": count / max(seconds, 1e-9),
                  "seconds": seconds, "batches": steps_per_epoch}
        history["epochs"].append(record)
        improved = score > best_val  # identical on every rank (all-reduced)
        best_val, stale = (score, 0) if improved else (best_val, stale + 1)
        stop = patience is not None and stale >= patience
        last_epoch = epoch == epochs - 1 or stop
        if improved:
            history["selected"] = selection(record, bool(len(val_set)))
        if rank == 0:
            _log_epoch(record, epochs, history)
            if improved:
                save_checkpoint({"model": module.state_dict(), "epoch": epoch + 1, "val_fmri_r": record["val_fmri_r"],
                                 "reason": history["selected"]["reason"]}, run_dir / "best.pt")
            if (epoch + 1) % settings["checkpoint_every"] == 0 or last_epoch:
                save_checkpoint({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict(), "epoch": epoch, "best_val": best_val,
                                 "stale": stale, "history": json.dumps(history)}, run_dir / "last.pt")
        if stop:
            if rank == 0:
                log.info("early stop: validation fMRI r has not improved for %d epochs", patience)
            history["early_stopped_at"] = epoch + 1
            break
    if rank == 0:
        save_checkpoint(module.state_dict(), run_dir / "final.pt")
        with atomic_path(run_dir / "history.json") as tmp:
            tmp.write_text(json.dumps(history, indent=1))
    dist.barrier()
    return False


def selected_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights a finished run selected (``best.pt``: the best validation fMRI r)."""
    return dict(load_checkpoint(Path(run_dir) / "best.pt")["model"])


def job_windows(job: TrainJob, rows: list[int]) -> WindowDataset:
    """The windows whose targets are ``rows`` (one split's), for this job."""
    n_rows = int(np.load(job.paths.fmri, mmap_mode="r").shape[-2])
    windows = plan_windows(np.asarray(rows, dtype=np.int64), np.asarray(job.run_starts), n_rows, job.n_lags,
                           job.window_trs)
    return WindowDataset(job.paths, windows, job.mode, job.stats, job.shapes.audio_is_codes, np.asarray(job.run_starts),
                         job.n_lags, job.window_trs)


def _log_epoch(record: dict, epochs: int, history: dict) -> None:
    done = [r["seconds"] for r in history["epochs"]]
    left = (epochs - record["epoch"]) * (sum(done) / len(done))
    parts = " ".join(f"{k}={v:.4f}" for k, v in record["train"].items() if k != "total")
    val_r = "" if record.get("val_fmri_r") is None else f" fMRI r {record['val_fmri_r']:.4f}"
    log.info("epoch %d/%d train %.4f (%s) val %.4f%s lr %.2e %.0f TRs/s, ~%.0f s left",
             record["epoch"], epochs, record["train"]["total"], parts, record["val"]["total"], val_r, record["lr"],
             record["samples_per_s"], left)


# ------------------------------------------------------------------------- launch
def _die_with_parent() -> None:
    """A spawned rank must not outlive the process that launched it: after a ``kill -9``
    of ``kedro run`` it would go on training, and writing checkpoints, unseen, beside the
    next run. Linux delivers SIGKILL to the child when its parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():  # it died before the line above
        os._exit(1)


def _spawned(rank: int, job: TrainJob) -> None:
    _die_with_parent()
    # A spawned child starts with Python's default logging: give it the run's configuration
    # (conf/logging.yml), appending to the run's log file.
    configure_rank_logging(project_root())
    run_rank(rank, job)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/.lock`` while training: a second run of the same experiment (same
    fingerprint, so the same folder) waits, saying for whom, instead of training over
    it. The kernel releases the lock when its holder dies, even by kill -9."""
    handle = open(run_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            log.warning("another run (%s) is training this experiment in %s; waiting for it to finish", holder,
                        run_dir)
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("the other run finished; continuing from its checkpoints")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def with_devices(job: TrainJob) -> TrainJob:
    """The job with its world size, backend and device resolved on this machine (kept
    when already set, e.g. by a test)."""
    if job.world_size is not None and job.backend is not None and job.device_type is not None:
        return job
    world, backend, device_type = resolve_devices(job.train)
    return dataclasses.replace(job, world_size=job.world_size or world, backend=job.backend or backend,
                               device_type=job.device_type or device_type)


@contextlib.contextmanager
def _rendezvous(run_dir: Path) -> Iterator[Path]:
    """An empty folder for the ranks' file-store rendezvous, inside the (locked) run
    folder: what a launcher killed with -9 leaves there is removed by the next launch of
    the same training, not left in /tmp for good (a stale store would also break the
    next rendezvous)."""
    folder = run_dir / ".rendezvous"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def launch(job: TrainJob) -> dict:
    """Run ``job`` on ``job.world_size`` local processes; return the training history."""
    import torch.multiprocessing as mp

    job = with_devices(job)
    Path(job.run_dir).mkdir(parents=True, exist_ok=True)
    with run_lock(Path(job.run_dir)), _rendezvous(Path(job.run_dir)) as rendezvous:
        job = dataclasses.replace(job, init_method=f"file://{rendezvous}/store")
        try:
            mp.start_processes(_spawned, args=(job,), nprocs=job.world_size, join=True, start_method="spawn")
        except mp.ProcessRaisedException as exc:
            detail = str(exc).strip().splitlines()
            raise TrainingFailed(f"training failed on a rank: {detail[-1] if detail else exc}\n{exc}") from None
        except mp.ProcessExitedException as exc:
            raise TrainingFailed(f"a training rank exited abnormally: {exc}") from None
    marker = Path(job.run_dir) / preemption.MARKER
    if marker.exists():
        where = json.loads(marker.read_text())
        raise Preempted(f"training stopped on request after step {where['steps_done']}/{where['steps_per_epoch']} of "
                        f"epoch {where['epoch']}; {Path(job.run_dir) / 'last.pt'} holds the position: run the same "
                        "spec again (or requeue the job) to resume there")
    return json.loads((Path(job.run_dir) / "history.json").read_text())


def main(argv: list[str] | None = None) -> None:
    """``torchrun ... -m giblet_kedro.training.ddp JOB.json``: one rank of a multi-node job."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        raise SystemExit("usage: torchrun [--nnodes N ...] -m giblet_kedro.training.ddp JOB.json")
    job = with_devices(TrainJob.from_json(Path(args[0]).read_text()))
    job = dataclasses.replace(job, init_method=None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if run_rank(int(os.environ.get("RANK", 0)), job):
        raise SystemExit(PREEMPTED_EXIT)


if __name__ == "__main__":
    code = 0
    try:
        main()
    except SystemExit as exc:
        if exc.code != PREEMPTED_EXIT:
            raise
        code = PREEMPTED_EXIT
    # Every output is written and synced by now. Leave without running C++ destructors:
    # under torchrun the rendezvous store lives in node 0's agent, which may already be
    # gone, and a store client torn down at interpreter exit can abort ("terminate called
    # without an active exception") and turn a finished rank into a failed one.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

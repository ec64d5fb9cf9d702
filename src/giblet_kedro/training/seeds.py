"""One model per training seed (``train.seeds``), trained one after another on the same
caches.

The first seed's run is the job's own folder (``run_dir``): its weights are the
``model_checkpoint`` every single-model consumer reads (verification, lesions, the timing
test). Every other seed trains in ``run_dir/seed-<seed>/`` with the same job otherwise;
the evaluation and the in-silico prediction average the fMRI predictions of all of them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

from giblet_kedro.datasets.atomic import atomic_path
from giblet_kedro.training.job import TrainJob
from giblet_kedro.training.preemption import MARKER

log = logging.getLogger(__name__)

CHECKPOINTS = ("last.pt", "best.pt", "final.pt", "history.json")


def seed_job(job: TrainJob, seed: int) -> TrainJob:
    """The job of one more seed: the same job, seeded by ``seed``, in its own folder."""
    if seed == job.seed:
        return job
    return dataclasses.replace(job, seed=int(seed), run_dir=str(Path(job.run_dir) / f"seed-{seed}"))


def write_seed_jobs(job: TrainJob) -> list[Path]:
    """Each seed's job file (``<its run_dir>/job.json``, written atomically), in seed
    order: the inputs of one ``torchrun`` launch each."""
    paths = []
    for seed in job.seeds:
        member = seed_job(job, seed)
        path = Path(member.run_dir) / "job.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(member.to_json())
        paths.append(path)
    return paths


def discard_checkpoints(run_dir: Path) -> None:
    """Remove a run's checkpoints and history (a fresh start instead of a resume)."""
    for name in CHECKPOINTS:
        (run_dir / name).unlink(missing_ok=True)


def finished(run_dir: Path) -> bool:
    """Did the run in ``run_dir`` end (its final weights and history written, no stop on
    request pending)?"""
    return ((run_dir / "final.pt").exists() and (run_dir / "history.json").exists()
            and not (run_dir / MARKER).exists())


def train_seeds(job: TrainJob, launch: Callable[[TrainJob], dict], fresh: bool = False) -> dict:
    """Train one model per seed of ``job.seeds`` with ``launch``: a seed whose run already
    finished is read, not run again (so a later seed's failure or preemption never
    retrains an earlier one); an unfinished one resumes from its ``last.pt``. ``fresh``
    discards every seed's checkpoints first. Returns the first seed's history, with
    ``seeds``: each seed's run folder, selected epoch and its validation fMRI r."""
    histories = {}
    for seed in job.seeds:
        member = seed_job(job, seed)
        run_dir = Path(member.run_dir)
        if fresh and ((run_dir / "last.pt").exists() or finished(run_dir)):
            log.info("--recompute: discarding the checkpoints in %s", run_dir)
            discard_checkpoints(run_dir)
        if finished(run_dir):
            log.info("seed %d: its run in %s already finished; reading it", seed, run_dir)
            histories[seed] = json.loads((run_dir / "history.json").read_text())
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "job.json").write_text(member.to_json())  # also the input of a torchrun launch
        if len(job.seeds) > 1:
            log.info("training seed %d (%d of %d)", seed, len(histories) + 1, len(job.seeds))
        histories[seed] = launch(member)
    history = histories[job.seed]
    if len(job.seeds) > 1:
        history["seeds"] = [{"seed": seed, "run_dir": seed_job(job, seed).run_dir,
                             "selected": h.get("selected"), "epochs_run": len(h.get("epochs", []))}
                            for seed, h in histories.items()]
    return history

"""Stopping a training run mid-epoch on request (a SLURM time limit, a preemption) so that
the next run of the same spec continues exactly where it stopped.

A stop is requested by creating the *request file*: ``$GIBLET_PREEMPT_FILE`` when set
(the sbatch template in ``docs/slurm/train.sbatch`` points it at a file its ``USR1`` trap
touches), else ``<run_dir>/PREEMPT``. A training rank that receives ``SIGUSR1`` creates it
too. Rank 0 looks for it after every step and the ranks agree by an all-reduce, so every
rank stops after the same step. Rank 0 then writes ``last.pt`` with the position inside
the epoch (steps done, each rank's RNG states and partial loss sums) and ``preempted.json``;
the run ends with :class:`~giblet_kedro.training.ddp.Preempted`. Run again (or
``scontrol requeue``) and training resumes at the next step, to the same weights as an
uninterrupted run (tested bitwise).

RNG states are stored as tensors and plain numbers so that ``torch.load(weights_only=True)``
reads them.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import torch

ENV_VAR = "GIBLET_PREEMPT_FILE"
MARKER = "preempted.json"


def request_file(run_dir: Path) -> Path:
    """Where a stop is requested for the run in ``run_dir``."""
    return Path(os.environ.get(ENV_VAR) or Path(run_dir) / "PREEMPT")


def install_signal_handler(run_dir: Path) -> None:
    """``SIGUSR1`` to this process requests a stop (creates the request file)."""
    target = request_file(run_dir)

    def _request(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()

    signal.signal(signal.SIGUSR1, _request)


def rng_state() -> dict:
    """This process's Python, numpy and torch (CPU and CUDA) RNG states, as tensors and numbers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss": gauss},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["internal"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])

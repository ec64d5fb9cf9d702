"""Run a pipeline's nodes on SLURM nodes through dask-jobqueue (the fMRI stage's map-reduce:
one node per subject and run, then per group of subjects and run).

Starts a Dask scheduler here (a login node or a small job), asks SLURM for ``--jobs``
worker jobs, and runs ``kedro run --runner=giblet_kedro.runner.DaskRunner`` against it.
The workers need this project installed (``pip install -e '.[dask]'``) and the project
folder, with ``data/``, at the same path: every node reads and writes the catalog's
files, never the scheduler's memory. Usage::

    python docs/slurm/dask_slurm.py --jobs 17 --memory 8GB --walltime 01:00:00 \\
        -- --pipelines=fmri --params experiment=sherlock
    python docs/slurm/dask_slurm.py --print-job-script   # what each worker job runs

Adapt ``--queue``, ``--account`` and the module loads (``--prologue``) to your cluster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def make_cluster(args: argparse.Namespace):
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        cores=args.cores, processes=1, memory=args.memory, walltime=args.walltime, queue=args.queue,
        account=args.account, job_name="giblet-dask", job_script_prologue=args.prologue,
        # One node per task: the fMRI partitions are single-threaded (bitwise across runners).
        worker_extra_args=["--nthreads", "1"], scheduler_options={"dashboard_address": None},
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, kedro_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="SLURM worker jobs (one Dask worker each)")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--memory", default="8GB", help="per worker job; a lab-size run needs about 1.5 GB")
    parser.add_argument("--walltime", default="01:00:00")
    parser.add_argument("--queue")
    parser.add_argument("--account")
    parser.add_argument("--prologue", action="append", default=[f"cd {Path.cwd()}", "export KEDRO_DISABLE_TELEMETRY=1"],
                        help="shell lines each job runs first (module load, venv activation)")
    parser.add_argument("--print-job-script", action="store_true")
    args = parser.parse_args(ours)
    with make_cluster(args) as cluster:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=args.jobs)
        env = {**os.environ, "GIBLET_DASK_SCHEDULER": cluster.scheduler_address, "KEDRO_DISABLE_TELEMETRY": "1"}
        command = ["kedro", "run", "--runner=giblet_kedro.runner.DaskRunner", *kedro_args]
        print("running:", " ".join(command), "on", cluster.scheduler_address, flush=True)
        return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())

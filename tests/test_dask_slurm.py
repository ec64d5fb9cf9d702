"""The SLURM route of the Dask runner (docs/slurm/dask_slurm.py): the job each worker
runs, without a SLURM cluster."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO


def test_worker_jobs_run_one_single_threaded_dask_worker_in_the_project(capsys):
    pytest.importorskip("dask_jobqueue")
    spec = importlib.util.spec_from_file_location("dask_slurm", REPO / "docs" / "slurm" / "dask_slurm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--print-job-script", "--memory", "6GB", "--walltime", "00:30:00", "--queue", "short"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH -J giblet-dask" in script and "#SBATCH -p short" in script and "#SBATCH -t 00:30:00" in script
    assert "export KEDRO_DISABLE_TELEMETRY=1" in script
    assert "distributed.cli.dask_worker" in script and "--nthreads 1" in script

"""benchmarks/gpu_step.py runs with torch and numpy alone (the GPU machine has no Kedro):
one small step on CPU with Kedro, pandas, nibabel and nilearn made unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RUN = """
import runpy, sys
for name in ("kedro", "pandas", "nibabel", "nilearn", "pandera"):
    sys.modules[name] = None  # import fails, as on a machine without them
sys.argv = ["gpu_step.py", "--device", "cpu", "--voxels", "500", "--window", "16", "--steps", "2", "--warmup", "1"]
runpy.run_path(%r, run_name="__main__")
"""


def test_one_step_runs_with_torch_and_numpy_alone():
    done = subprocess.run([sys.executable, "-c", RUN % str(REPO / "benchmarks" / "gpu_step.py")],
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["voxels"] == 500 and result["step_s_median"] > 0 and result["precision"] == "fp32"
    assert result["context_trs"] == 14 and result["target_trs_per_rank"] == 16 - 14 + 1

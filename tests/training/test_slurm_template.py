"""The shipped sbatch templates: USR1 before the time limit makes the run stop through
the request file and the job requeue itself; a run that ends on its own is not requeued
and keeps its exit status. SLURM is replaced by stand-ins on PATH (``kedro`` waits for
the request file as a training rank does; ``scontrol`` records its arguments)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

TEMPLATES = Path(__file__).resolve().parents[2] / "docs" / "slurm"

FAKE_KEDRO = """#!/bin/bash
# kedro giblet job -> a job path; kedro run -> train until the request file appears.
if [ "$1" = giblet ]; then echo /shared/job.json; exit 0; fi
for _ in $(seq 1 200); do
  if [ -e "$GIBLET_PREEMPT_FILE" ]; then rm -f "$GIBLET_PREEMPT_FILE"; echo "stopped on request"; exit 1; fi
  if [ -n "${FAKE_FINISH:-}" ]; then exit "$FAKE_FINISH"; fi
  sleep 0.05
done
exit 9
"""


def _stand_ins(folder: Path) -> dict[str, str]:
    folder.mkdir()
    for name, text in (("kedro", FAKE_KEDRO), ("scontrol", '#!/bin/bash\necho "$@" >> "$SCONTROL_LOG"\n'
                                                              'if [ "$1" = show ]; then echo node1; fi\n'),
                       ("srun", '#!/bin/bash\nshift\nexec kedro run "$@"\n')):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "1", "EXPERIMENT": "demo",
            "SCONTROL_LOG": str(folder / "scontrol.log")}


@pytest.mark.serial  # the signal must land while the run is under way: a timing
@pytest.mark.parametrize("template", ["train.sbatch", "train-multinode.sbatch"])
def test_usr1_stops_the_run_and_requeues_the_job(tmp_path, template):
    env = _stand_ins(tmp_path / "bin")
    job = subprocess.Popen(["bash", str(TEMPLATES / template)], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # the run is under way
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=30)
    assert job.returncode == 0, out
    assert "requeueing job 4242" in out
    assert "requeue 4242" in (tmp_path / "bin" / "scontrol.log").read_text()
    assert not (tmp_path / ".giblet" / "preempt-4242").exists()  # served by the run


@pytest.mark.parametrize("status", [0, 3])
def test_a_run_that_ends_on_its_own_is_not_requeued(tmp_path, status):
    env = {**_stand_ins(tmp_path / "bin"), "FAKE_FINISH": str(status)}
    done = subprocess.run(["bash", str(TEMPLATES / "train.sbatch")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == status
    log = tmp_path / "bin" / "scontrol.log"
    assert not log.exists() or "requeue" not in log.read_text()

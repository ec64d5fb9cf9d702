"""Sweeps: one valid spec per grid point, sharing every cache a swept key does not reach."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from giblet_kedro.errors import SpecError
from giblet_kedro.spec.compile import compile_experiment
from giblet_kedro.spec.sweep import parse_grid, parse_value, points, read_sweep, slurm_array, write_sweep

DEMO = Path(__file__).resolve().parents[2] / "conf" / "base" / "experiments" / "demo.yml"
UPSTREAM = ("fmri_stats", "fmri_tensor", "video_frames_tr", "audio_codes_tr", "text_embeddings_tr", "video_features",
            "audio_codes", "text_embeddings")


def test_grid_values_read_as_a_spec_would():
    assert [parse_value(v) for v in ("voxels", "2048", "1e-3", "3.0e-4", "true", "null")] == \
        ["voxels", 2048, 1e-3, 3e-4, True, None]
    grid = parse_grid(["model.bottleneck=voxels,2048", "train.lr=1e-3,3e-4"])
    assert points(grid) == [{"model.bottleneck": "voxels", "train.lr": 1e-3}, {"model.bottleneck": "voxels", "train.lr": 3e-4},
                            {"model.bottleneck": 2048, "train.lr": 1e-3}, {"model.bottleneck": 2048, "train.lr": 3e-4}]
    for bad, message in ((["train.lr"], "expected KEY=VALUE1,VALUE2"), ([], "at least one --grid"),
                         (["train.lr=1", "train.lr=2"], "given twice")):
        with pytest.raises(SpecError, match=message):
            parse_grid(bad)


def test_points_share_every_cache_their_keys_do_not_reach(tmp_path):
    grid = parse_grid(["model.bottleneck=voxels,64", "train.lr=1e-3,3e-4"])
    written = write_sweep(DEMO, grid, tmp_path / "sweep")
    assert [p.name for p in written] == ["demo-00", "demo-01", "demo-02", "demo-03"]
    compiled = [compile_experiment(str(p.path), check_files=False) for p in written]
    assert [c.spec.train.lr for c in compiled] == [1e-3, 3e-4, 1e-3, 3e-4]
    assert [c.spec.model.bottleneck for c in compiled] == ["voxels", "voxels", 64, 64]
    base = compile_experiment(str(DEMO), check_files=False)
    for stage in UPSTREAM:  # the fMRI and stimulus stages: computed once for the whole sweep
        assert {c.fingerprints[stage] for c in compiled} == {base.fingerprints[stage]}, stage
    assert len({c.fingerprints["train"] for c in compiled}) == 4
    index = read_sweep(tmp_path / "sweep")
    assert index["points"][3]["values"] == {"model.bottleneck": 64, "train.lr": 3e-4}


def test_an_invalid_point_writes_nothing_and_names_the_key(tmp_path):
    with pytest.raises(SpecError, match=r"sweep point demo-00: .*train\.lrr"):
        write_sweep(DEMO, parse_grid(["train.lrr=1e-3,3e-4"]), tmp_path / "sweep")
    with pytest.raises(SpecError, match=r"sweep point demo-01: .*fmri\.mode"):
        write_sweep(DEMO, parse_grid(["fmri.mode=cross_subject,sideways"]), tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_a_new_sweep_of_the_same_base_replaces_the_old_points(tmp_path):
    write_sweep(DEMO, parse_grid(["train.lr=1e-3,3e-4,1e-4"]), tmp_path / "sweep")
    write_sweep(DEMO, parse_grid(["train.epochs=2,3"]), tmp_path / "sweep")
    assert sorted(p.name for p in (tmp_path / "sweep").glob("*.yml")) == ["demo-00.yml", "demo-01.yml"]
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["grid"] == {"train.epochs": [2, 3]}


def test_the_slurm_array_runs_one_point_per_task(tmp_path):
    written = write_sweep(DEMO, parse_grid(["train.lr=1e-3,3e-4,1e-4"]), tmp_path / "sweep")
    script = slurm_array(written, "evaluate", tmp_path)
    assert "#SBATCH --array=0-2" in script and all(str(p.path) in script for p in written)
    assert 'experiment=${POINTS[$SLURM_ARRAY_TASK_ID]}' in script
    (tmp_path / "sweep.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "sweep.sbatch")]).returncode == 0

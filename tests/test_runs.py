"""Run history and comparison (``kedro giblet runs`` / ``compare``)."""

from __future__ import annotations

import multiprocessing

import pytest

from giblet_kedro import runs
from giblet_kedro.errors import GibletError


def record(run_id: str, name: str, dropout: float, mean_r: float) -> dict:
    return {"run_id": run_id, "experiment": name, "date": "2026-11-24T00:00:00+00:00",
            "spec": {"name": name, "model": {"dropout": dropout, "hidden": 256}},
            "fingerprints": {"fmri_stats": "a", "train": f"t{dropout}"}, "metrics": {"eval.mean_r": mean_r}}


def test_find_run_by_id_prefix_and_experiment_offset():
    records = [record("20261124-1", "demo", 0.1, 0.3), record("20261124-2", "other", 0.1, 0.2),
               record("20261125-3", "demo", 0.3, 0.28)]
    assert runs.find_run(records, "20261125")["run_id"] == "20261125-3"
    assert runs.find_run(records, "demo~0")["run_id"] == "20261125-3"
    assert runs.find_run(records, "demo~1")["run_id"] == "20261124-1"
    with pytest.raises(GibletError, match="demo~0 to demo~1"):
        runs.find_run(records, "demo~2")
    with pytest.raises(GibletError, match="matches 2 recorded runs"):
        runs.find_run(records, "20261124")


def test_compare_lists_changed_spec_keys_recomputed_stages_and_all_metrics():
    diff = runs.compare(record("a", "demo", 0.1, 0.30), record("b", "demo", 0.3, 0.28))
    assert diff["spec"] == [("model.dropout", 0.1, 0.3)]
    assert diff["stages"] == [("train", "t0.1", "t0.3")]
    assert diff["metrics"] == [("eval.mean_r", 0.30, 0.28)]


def _compiled(name: str):
    from pathlib import Path

    from giblet_kedro.spec.compile import compile_spec
    from giblet_kedro.spec.load import parse_spec

    text = f"name: {name}\nfmri: {{subjects: {{'01': a.nii.gz, '02': b.nii.gz}}, tr: 1.5}}\n"
    return compile_spec(parse_spec(text), Path(f"{name}.yml"), check_files=False)


def _append(index: int) -> str:
    return runs.record_run(_compiled(f"exp{index % 3}"), ["train"])["run_id"]


def test_history_survives_concurrent_writers_and_a_torn_line(tmp_path, monkeypatch):
    """Records from 4 processes at once are whole lines; a line torn by a killed writer
    is skipped, and metrics of stages never run are simply absent."""
    monkeypatch.setenv("GIBLET_PROJECT_ROOT", str(tmp_path))
    with multiprocessing.get_context("fork").Pool(4) as pool:
        ids = pool.map(_append, range(12))
    with open(runs.history_file(), "a") as handle:
        handle.write('{"run_id": "torn", "experi')  # a writer killed mid-line
    loaded = runs.load_history()
    assert len(set(ids)) == 12 and sorted(r["run_id"] for r in loaded) == sorted(ids)
    assert {r["experiment"] for r in loaded} == {"exp0", "exp1", "exp2"}
    assert all(r["metrics"] == {} and r["spec"]["fmri"]["tr"] == 1.5 for r in loaded)
    assert len({r["spec_fingerprint"] for r in loaded}) == 3

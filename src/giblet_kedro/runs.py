"""Run history: every successful ``kedro run`` appends a record (``data/.giblet/runs.jsonl``):
when, which spec (its content and fingerprint), which pipelines, each stage's
fingerprint and a snapshot of the headline metrics found in that run's caches.
``kedro giblet runs`` lists them; ``kedro giblet compare`` puts two side by side.

The snapshot is taken at record time, so a comparison still works after ``kedro giblet
caches --prune`` removed the caches it came from.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from giblet_kedro.errors import GibletError
from giblet_kedro.paths import data_dir
from giblet_kedro.spec.compile import CompiledExperiment
from giblet_kedro.spec.fingerprint import hash_payload

HISTORY = ".giblet/runs.jsonl"


def history_file() -> Path:
    return data_dir() / HISTORY


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def headline_metrics(compiled: CompiledExperiment) -> dict[str, Any]:
    """The numbers a person compares runs by, read from this spec's caches (absent
    stages are left out)."""
    out: dict[str, Any] = {}
    history = _json(compiled.cache_dir("train") / "history.json")
    if history and history.get("epochs"):
        last = history["epochs"][-1]
        out["train.epochs"] = len(history["epochs"])
        out["train.final_train_loss"] = last["train"]["total"]
        out["train.final_val_loss"] = last["val"]["total"]
    report = _json(compiled.cache_dir("verify") / "verification_report.json")
    if report:
        out["verify.passed"] = f"{sum(c['pass'] for c in report['checks'])}/{len(report['checks'])}"
    evaluation = _json(compiled.cache_dir("evaluate") / "evaluation_metrics.json")
    if evaluation:
        model, ridge = evaluation["autoencoder"], evaluation["ridge"]
        out |= {"eval.mean_r": model["mean_r"], "eval.median_r": model["median_r"],
                "eval.share_significant": model["share_significant"], "eval.ridge_mean_r": ridge["mean_r"],
                "eval.minus_ridge": evaluation["comparison"]["difference"],
                "eval.verdict_vs_ridge": evaluation["comparison"]["verdict"]}
        if "r_over_ceiling" in model:
            out["eval.r_over_ceiling"] = model["r_over_ceiling"]
        if "noise_ceiling" in evaluation:
            out["eval.ceiling_median"] = evaluation["noise_ceiling"]["median"]
        recon = evaluation.get("reconstruction", {})
        for name, key in (("video", "psnr_db_mean"), ("audio", "code_accuracy"), ("text", "top1_retrieval")):
            if key in recon.get(name, {}):
                out[f"recon.{name}.{key}"] = recon[name][key]
    lesions = _json(compiled.cache_dir("lesion") / "lesion_metrics.json")
    for name, entry in (lesions or {}).get("regions", {}).items():
        top = entry["most_affected"]
        effect = entry["effects"][top]
        out[f"lesion.{name}"] = f"{top} {effect['effect']:+.3f} (p {effect['p']:.3g}" + (
            ", FDR significant)" if effect.get("fdr_significant") else ")")
    return out


def record_run(compiled: CompiledExperiment, pipelines: list[str]) -> dict[str, Any]:
    """Append this run's record to the history (under a lock: concurrent runs each get a
    whole line) and return it."""
    spec = compiled.spec.model_dump(mode="json")
    now = datetime.now(UTC)
    record = {
        "run_id": f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",  # unique even within one second
        "date": now.isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "experiment": compiled.spec.name,
        "spec_file": str(compiled.spec_file),
        "spec_fingerprint": hash_payload(spec),
        "pipelines": pipelines,
        "fingerprints": dict(compiled.fingerprints),
        "metrics": headline_metrics(compiled),
        "spec": spec,
    }
    path = history_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return record


def load_history() -> list[dict[str, Any]]:
    """Every recorded run, oldest first (a torn last line from a killed writer is skipped)."""
    try:
        lines = history_file().read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def find_run(records: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """A run by its id, a unique id prefix, or ``NAME~N`` (the N-th latest run of
    experiment NAME, ``~0`` the latest)."""
    if "~" in key:
        name, _, back = key.rpartition("~")
        runs = [r for r in records if r["experiment"] == name]
        if not back.isdigit() or int(back) >= len(runs):
            raise GibletError(f"run {key!r}: experiment {name!r} has {len(runs)} recorded run(s); "
                              f"accepted: {name}~0 to {name}~{max(len(runs) - 1, 0)}")
        return runs[-1 - int(back)]
    matches = [r for r in records if r["run_id"].startswith(key)]
    if len(matches) != 1:
        known = ", ".join(r["run_id"] for r in records[-5:]) or "none yet"
        raise GibletError(f"run {key!r} matches {len(matches)} recorded runs; give a run id (latest: {known}) "
                          "or EXPERIMENT~N (N-th latest run of EXPERIMENT); list them with `kedro giblet runs`")
    return matches[0]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: value}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[tuple[str, Any, Any]]]:
    """Differences between two runs: spec keys, stage fingerprints, and every headline
    metric (all of them, changed or not: the numbers are what is compared)."""
    spec_a, spec_b = flatten(a["spec"]), flatten(b["spec"])
    spec = [(k, spec_a.get(k), spec_b.get(k)) for k in sorted(spec_a.keys() | spec_b.keys())
            if spec_a.get(k) != spec_b.get(k)]
    stages = [(k, a["fingerprints"].get(k), b["fingerprints"].get(k))
              for k in sorted(a["fingerprints"].keys() | b["fingerprints"].keys())
              if a["fingerprints"].get(k) != b["fingerprints"].get(k)]
    metrics = [(k, a["metrics"].get(k), b["metrics"].get(k)) for k in sorted(a["metrics"].keys() | b["metrics"].keys())]
    return {"spec": spec, "stages": stages, "metrics": metrics}

"""``fmri.bids``: find subjects, runs, TR and confound tables in a BIDS folder.

A BIDS (or fMRIPrep derivatives) folder names every file by its entities
(``sub-01_task-sherlock_run-1_space-MNI_desc-preproc_bold.nii.gz``). This module reads
those names, keeps the BOLD runs of the spec's task (and space and desc, when given),
reads the TR from the JSON sidecars, and returns the spec with explicit ``subjects``
(id -> run -> file), ``tr`` and, when confounds are regressed, their tables, in place of
``bids``. Everything downstream then sees an ordinary spec (``kedro giblet spec`` shows
what was found).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from giblet_kedro.errors import InputDataError
from giblet_kedro.spec.schema import BidsSpec, ExperimentSpec

BOLD_SUFFIXES = ("_bold.nii.gz", "_bold.nii")
CONFOUND_SUFFIXES = ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv")
# Entities that name a derivative's space or processing, not the acquisition: a confound
# table of fMRIPrep shares every entity of its BOLD run except these.
DERIVATIVE_ENTITIES = ("space", "res", "den", "desc")
ENTITY = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9]+)$")
TR_REL_TOL = 0.01


@dataclass(frozen=True)
class BoldFile:
    path: Path
    entities: dict[str, str]  # in file-name order

    @property
    def stem(self) -> str:
        name = self.path.name
        return name[: -len(next(s for s in BOLD_SUFFIXES if name.endswith(s)))]

    @property
    def run_id(self) -> str:
        """``<run>`` (``1`` when the name has none), prefixed by the session when there is one."""
        run = self.entities.get("run", "1")
        return f"{self.entities['ses']}_{run}" if "ses" in self.entities else run


def parse_entities(stem: str) -> dict[str, str] | None:
    """``sub-01_task-x_run-1`` -> ``{"sub": "01", "task": "x", "run": "1"}``; None if not BIDS."""
    entities: dict[str, str] = {}
    for part in stem.split("_"):
        match = ENTITY.match(part)
        if match is None or match.group(1) in entities:
            return None
        entities[match.group(1)] = match.group(2)
    return entities if "sub" in entities else None


def find_bold_files(root: Path) -> list[BoldFile]:
    """Every ``*_bold.nii[.gz]`` under ``sub-*/[ses-*/]func/``, with its entities."""
    found = []
    for path in sorted(root.glob("sub-*/func/*_bold.nii*")) + sorted(root.glob("sub-*/ses-*/func/*_bold.nii*")):
        if not path.name.endswith(BOLD_SUFFIXES):
            continue
        stem = path.name[: -len(next(s for s in BOLD_SUFFIXES if path.name.endswith(s)))]
        entities = parse_entities(stem)
        if entities is not None:
            found.append(BoldFile(path, entities))
    return found


def _run_sort_key(run_id: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in run_id.split("_")]


def select_runs(files: list[BoldFile], bids: BidsSpec, root: Path) -> dict[str, dict[str, BoldFile]]:
    """Subject id -> run id -> file, for the spec's task/space/desc; errors list what was found."""
    def wanted(f: BoldFile) -> bool:
        return (f.entities.get("task") == bids.task
                and (bids.space is None or f.entities.get("space") == bids.space)
                and (bids.desc is None or f.entities.get("desc") == bids.desc))

    matches = [f for f in files if wanted(f)]
    if not matches:
        listing = sorted({f.path.name for f in files})[:20]
        raise InputDataError(
            f"fmri.bids: no BOLD run in {root} matches task={bids.task!r}"
            f"{f', space={bids.space!r}' if bids.space else ''}{f', desc={bids.desc!r}' if bids.desc else ''}; "
            f"found {len(files)} BOLD files{': ' + ', '.join(listing) if listing else ''}"
        )
    runs: dict[str, dict[str, BoldFile]] = {}
    for f in matches:
        subject = runs.setdefault(f.entities["sub"], {})
        other = subject.get(f.run_id)
        if other is not None:
            raise InputDataError(
                f"fmri.bids: subject {f.entities['sub']!r} run {f.run_id!r} is ambiguous: "
                f"{other.path.name} and {f.path.name} both match; give fmri.bids.space and/or desc to choose"
            )
        subject[f.run_id] = f
    if bids.subjects is not None:
        unknown = sorted(set(bids.subjects) - set(runs))
        if unknown:
            raise InputDataError(f"fmri.bids.subjects {unknown} not found in {root}; found subjects {sorted(runs)}")
        runs = {sid: runs[sid] for sid in bids.subjects}
    return {sid: dict(sorted(r.items(), key=lambda item: _run_sort_key(item[0])))
            for sid, r in sorted(runs.items())}


def sidecar_tr(bold: BoldFile, root: Path, task: str) -> tuple[float, Path] | None:
    """RepetitionTime (s) from the run's own JSON sidecar, else the task-level one at the
    root (BIDS inheritance); None if neither exists."""
    for candidate in (bold.path.with_name(bold.stem + "_bold.json"), root / f"task-{task}_bold.json"):
        if candidate.is_file():
            try:
                value = json.loads(candidate.read_text(encoding="utf-8")).get("RepetitionTime")
            except (OSError, ValueError) as exc:
                raise InputDataError(f"fmri.bids: cannot read sidecar {candidate}: {exc}") from None
            if value is None:
                continue
            if not isinstance(value, int | float) or value <= 0:
                raise InputDataError(f"fmri.bids: {candidate} has RepetitionTime {value!r}; expected seconds > 0")
            return float(value), candidate
    return None


def confound_table(bold: BoldFile) -> Path:
    """fMRIPrep's confound table of a BOLD run (``*_desc-confounds_timeseries.tsv``)."""
    keep = "_".join(f"{k}-{v}" for k, v in bold.entities.items() if k not in DERIVATIVE_ENTITIES)
    candidates = [bold.path.with_name(keep + suffix) for suffix in CONFOUND_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in bold.path.parent.glob("*confounds*"))
    raise InputDataError(
        f"fmri.bids: no confound table for {bold.path.name}: looked for {[c.name for c in candidates]} "
        f"in {bold.path.parent}; confound files there: {present or 'none'}"
    )


def resolve_tr(runs: dict[str, dict[str, BoldFile]], root: Path, task: str, spec_tr: float | None) -> float:
    """One TR for every run: from the sidecars, cross-checked with ``fmri.tr`` if given."""
    seen: dict[float, Path] = {}
    for subject in runs.values():
        for bold in subject.values():
            found = sidecar_tr(bold, root, task)
            if found is not None:
                seen.setdefault(found[0], found[1])
    values = sorted(seen)
    if len(values) > 1 and not math.isclose(values[0], values[-1], rel_tol=TR_REL_TOL):
        raise InputDataError(
            "fmri.bids: runs have different RepetitionTime values in their sidecars: "
            + ", ".join(f"{v:g} s ({p})" for v, p in seen.items())
        )
    if not values:
        if spec_tr is None:
            raise InputDataError(
                f"fmri.bids: no sidecar JSON in {root} gives RepetitionTime; give fmri.tr (seconds per volume)"
            )
        return spec_tr
    if spec_tr is not None and not math.isclose(values[0], spec_tr, rel_tol=TR_REL_TOL):
        raise InputDataError(
            f"fmri.tr is {spec_tr:g} s but the sidecar {seen[values[0]]} says RepetitionTime {values[0]:g} s"
        )
    return values[0]


def expand_bids(spec: ExperimentSpec, root: Path) -> ExperimentSpec:
    """The spec with ``fmri.subjects``, ``fmri.tr`` (and confound files) read from the
    BIDS folder ``root`` (already resolved)."""
    fmri = spec.fmri
    assert fmri.bids is not None
    if not root.is_dir():
        raise InputDataError(f"fmri.bids.root: {root} is not a folder")
    runs = select_runs(find_bold_files(root), fmri.bids, root)
    data = fmri.model_dump(mode="json")
    data["subjects"] = {sid: {run: str(bold.path) for run, bold in subject.items()} for sid, subject in runs.items()}
    data["bids"] = None
    data["tr"] = resolve_tr(runs, root, fmri.bids.task, fmri.tr)
    confounds = fmri.clean.confounds if fmri.clean else None
    if confounds is not None and confounds.files is None and confounds.pattern is None:
        data["clean"]["confounds"]["files"] = {
            sid: {run: str(confound_table(bold)) for run, bold in subject.items()} for sid, subject in runs.items()}
    whole = spec.model_dump(mode="json")
    whole["fmri"] = data
    try:
        return ExperimentSpec.model_validate(whole)
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False))
        raise InputDataError(f"fmri.bids: the runs found in {root} do not form a usable experiment: {problems}") from None

"""The fMRI stage as map-reduce: what each partition computes on its own, and how it
is stored between the map and the reduce.

Each partition is read (and decompressed) by its own Kedro node, so ``ParallelRunner``
or a Dask cluster spreads the reading over cores or machines:

- map 1, per (subject, run): the run's statistics
  (:class:`~giblet_kedro.fmri.stats.SubjectMoments`, a few vectors) -> reduce 1: the
  mask and ``fmri_norm_stats``;
- map 2, per (group of subjects, run): the group's runs (read from the voxels map 1
  kept, :mod:`giblet_kedro.fmri.kept`) cleaned and z-scored with the saved statistics
  and summed (``cross_subject``; stacked for ``per_subject``), plus
  each subject's val and test rows -> reduce 2: the training tensor (the group sums
  added, then averaged). The evaluation's inter-subject pass reads the val and test
  rows instead of reading every run again.

Summing inside the map writes one run per group instead of one per subject (a quarter of
the bytes with the default ``fmri.subjects_per_group: 4``): the partials' writes and
reads were the map-reduce's serial cost. The single-process path adds in the same
groups and order, so the outputs are bitwise the same whatever ran where.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from giblet_kedro.fmri.moments import RunningMoments
from giblet_kedro.fmri.normalize import subject_groups
from giblet_kedro.fmri.sources import RunKey, saved_crops
from giblet_kedro.fmri.stats import SubjectMoments

MOMENTS_DATASET = "fmri_run_moments_{partition}"
VOXELS_DATASET = "fmri_run_voxels_{partition}"
GROUP_SUM_DATASET = "fmri_group_sum_{partition}"
GROUP_ROWS_DATASET = "fmri_group_rows_{partition}"
# The splits whose rows the inter-subject pass reads, per subject.
VAL_TEST = ("val", "test")


def partition_name(subject: str, run: str) -> str:
    """A partition's name in node and dataset names: ``sub-<id>_run-<run>``."""
    return f"sub-{subject}_run-{run}"


def partition_names(keys: list[RunKey]) -> dict[str, RunKey]:
    """Partition name -> (subject, run), in the given order; refuses two keys that would
    share a name (ids such as ``a_run-1`` could)."""
    names: dict[str, RunKey] = {}
    for key in keys:
        name = partition_name(*key)
        if name in names:
            raise ValueError(f"subjects/runs {names[name]} and {key} share the partition name {name!r}; "
                             "rename one of the ids")
        names[name] = key
    return names


_OPTIONAL = ("mean", "std", "early_std", "raw_var")


def moments_to_arrays(moments: SubjectMoments, subject: str, run: str, censored: np.ndarray) -> dict[str, np.ndarray]:
    """One run's statistics as the arrays of an ``.npz`` (float64 kept: the reduce pools
    runs exactly as in memory). ``censored``: its crop-relative censored TRs."""
    arrays = {"subject": np.array(subject), "run": np.array(run), "nonfinite": moments.nonfinite,
              "censored": np.asarray(censored, dtype=np.int64)}
    for name in _OPTIONAL:
        value = getattr(moments, name)
        if value is not None:
            arrays[name] = value
    if moments.moments is not None:
        arrays |= {"moments_count": np.array(moments.moments.count), "moments_mean": moments.moments.mean,
                   "moments_m2": moments.moments.m2}
    return arrays


def moments_from_arrays(arrays: dict[str, np.ndarray]) -> tuple[RunKey, SubjectMoments, np.ndarray]:
    """Inverse of :func:`moments_to_arrays`: ((subject, run), moments, censored TRs)."""
    running = None
    if "moments_count" in arrays:
        running = RunningMoments(0)
        running.count = int(arrays["moments_count"])
        running.mean, running.m2 = np.asarray(arrays["moments_mean"]), np.asarray(arrays["moments_m2"])
    optional = {name: (np.asarray(arrays[name]) if name in arrays else None) for name in _OPTIONAL}
    moments = SubjectMoments(nonfinite=np.asarray(arrays["nonfinite"]), moments=running, **optional)
    key = (str(arrays["subject"]), str(arrays["run"]))
    return key, moments, np.asarray(arrays["censored"], dtype=np.int64)


@dataclass(frozen=True)
class Partitions:
    """An experiment's map-reduce partitions: its (subject, run) pairs, subjects then runs
    (``fmri.run_keys``), ``fmri.subjects_per_group``, and whether the first pass keeps
    each run's voxels for the second (``fmri.keep_decompressed``)."""

    run_keys: tuple[RunKey, ...]
    group_size: int
    keep_decompressed: bool = True

    @property
    def subject_ids(self) -> list[str]:
        return list(dict.fromkeys(sid for sid, _ in self.run_keys))

    @property
    def run_ids(self) -> list[str]:
        return list(dict.fromkeys(run for _, run in self.run_keys))

    def statistics(self) -> dict[str, RunKey]:
        """The first pass's partitions: name -> (subject, run)."""
        return partition_names(list(self.run_keys))

    def groups(self) -> dict[str, tuple[list[str], str]]:
        """The second pass's partitions: name -> (subjects, run)."""
        return group_partitions(self.subject_ids, self.run_ids, self.group_size)


def group_partition_name(index: int, run: str) -> str:
    """The second pass's partition for group ``index`` (from 0) and a run:
    ``group-<k>_run-<run>``, k from 1."""
    return f"group-{index + 1}_run-{run}"


def group_partitions(subject_ids: list[str], run_ids: list[str], size: int) -> dict[str, tuple[list[str], str]]:
    """Partition name -> (its subjects, run), groups then runs."""
    return {group_partition_name(index, run): (group, run)
            for index, group in enumerate(subject_groups(subject_ids, size)) for run in run_ids}


def val_test_rows(split: pd.DataFrame, run: str) -> np.ndarray:
    """Crop-relative rows of ``run`` in the val or test split (sorted): the rows of each
    subject the inter-subject pass reads."""
    part = split.loc[split["run"].astype(str) == run]
    return part.loc[part["split"].isin(VAL_TEST), "run_tr"].to_numpy(dtype=np.int64)


def _saved_layout(stats: dict[str, np.ndarray], size: int) -> tuple[list[list[str]], list[str]]:
    """(the groups of subjects, the run ids), as the saved statistics order them."""
    ids = [str(sid) for sid in np.atleast_1d(stats["subject_ids"])]
    return subject_groups(ids, size), list(saved_crops(stats))


def _check_present(partials: dict[str, np.ndarray], names, what: str) -> None:
    missing = sorted(name for name in names if name not in partials)
    if missing:
        raise ValueError(f"no {what} for the partitions {missing}")


def by_group(partials: dict[str, np.ndarray], stats: dict[str, np.ndarray], size: int
             ) -> list[tuple[list[str], list[np.ndarray]]]:
    """Group partials (partition name -> array) arranged as (the group's subjects, its
    runs in concatenation order), groups in saved order. Raises naming the missing."""
    groups, run_ids = _saved_layout(stats, size)
    names = [[group_partition_name(index, run) for run in run_ids] for index in range(len(groups))]
    _check_present(partials, sum(names, []), "normalized group")
    return [(group, [partials[name] for name in row]) for group, row in zip(groups, names, strict=True)]


def subject_rows(partials: dict[str, np.ndarray], stats: dict[str, np.ndarray], split: pd.DataFrame, size: int,
                 row_sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each subject's cleaned, z-scored data on each set of rows of the concatenated runs,
    read from the map's val and test rows (``partials``: partition name -> ``(n_group,
    n_val_test_rows_run, n_voxels)``).

    row_sets : name -> rows of the concatenated runs, each a val or test row.

    Returns ``{name: (n_subjects, n_rows, n_voxels) float32}``, subjects in saved order.
    """
    arranged = by_group(partials, stats, size)
    crops = saved_crops(stats)
    run_ids = list(crops)
    offsets = np.cumsum([0] + [stop - start for start, stop in crops.values()])
    kept = [val_test_rows(split, run) for run in run_ids]
    n_subjects = sum(len(subjects) for subjects, _ in arranged)
    n_voxels = arranged[0][1][0].shape[-1]
    out = {}
    for which, rows in row_sets.items():
        rows = np.asarray(rows, dtype=np.int64)
        run_of = np.searchsorted(offsets, rows, side="right") - 1
        picked = np.empty((n_subjects, len(rows), n_voxels), dtype=np.float32)
        for run_index, run in enumerate(run_ids):
            selected = run_of == run_index
            local = rows[selected] - offsets[run_index]
            if not np.isin(local, kept[run_index]).all():
                raise ValueError(f"{which}: rows outside the val and test rows of run {run!r}")
            position = np.searchsorted(kept[run_index], local)
            first = 0
            for subjects, runs in arranged:
                picked[first: first + len(subjects), selected] = runs[run_index][:, position]
                first += len(subjects)
        out[which] = picked
    return out

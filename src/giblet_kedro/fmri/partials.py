"""The fMRI stage as map-reduce: what one (subject, run) partition computes on its own,
and how it is stored between the map and the reduce.

Each partition is read (and decompressed) by its own Kedro node, so ``ParallelRunner``
or a Dask cluster spreads the reading over cores or machines:

- map 1, per run: its statistics (:class:`~giblet_kedro.fmri.stats.SubjectMoments`,
  a few vectors) -> reduce 1: the mask and ``fmri_norm_stats``;
- map 2, per run: the run cleaned and z-scored with the saved statistics,
  ``(n_trs_run, n_voxels)`` float32 -> reduce 2: the training tensor (subjects averaged
  or stacked). The evaluation's inter-subject pass reads its val and test rows from the
  same partials instead of reading every run again.

The reduces add in the same order as a single process would, so the outputs are bitwise
the sequential ones whatever ran where.
"""

from __future__ import annotations

import numpy as np

from giblet_kedro.fmri.moments import RunningMoments
from giblet_kedro.fmri.sources import RunKey, saved_crops
from giblet_kedro.fmri.stats import SubjectMoments

MOMENTS_DATASET = "fmri_run_moments_{partition}"
ZSCORED_DATASET = "fmri_run_zscored_{partition}"


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


def by_subject(partials: dict[str, np.ndarray], stats: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
    """Normalized runs (partition name -> ``(n_trs_run, n_voxels)``) arranged per subject
    in the saved order, runs in concatenation order. Raises naming the partitions that are
    missing."""
    run_ids = list(saved_crops(stats))
    ids = [str(sid) for sid in np.atleast_1d(stats["subject_ids"])]
    names = {key: name for name, key in partition_names([(sid, run) for sid in ids for run in run_ids]).items()}
    missing = sorted(name for name in names.values() if name not in partials)
    if missing:
        raise ValueError(f"no normalized run for the partitions {missing}")
    return [[partials[names[(sid, run)]] for run in run_ids] for sid in ids]

"""fMRI stage: raw runs -> subject table -> split -> norm stats -> training tensor.

The two passes over the data are map-reduce, one node per (subject, run), then per
(group of subjects, run) (:mod:`giblet_kedro.fmri.partials`): ``kedro run --runner=ParallelRunner`` or the Dask
runner reads runs in parallel, and a killed run resumes from the partitions it finished.
"""

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from giblet_kedro.fmri.partials import (
    GROUP_ROWS_DATASET,
    GROUP_SUM_DATASET,
    MOMENTS_DATASET,
    VOXELS_DATASET,
    Partitions,
    partition_name,
)
from giblet_kedro.pipelines.fmri.nodes import (
    combine_normalized,
    combine_statistics,
    inspect_runs,
    make_split,
    normalize_heldout,
    normalized_group,
    run_statistics,
    run_statistics_and_voxels,
)


class PartitionFunction(partial):
    """A node function bound to one partition: a partial (picklable, so ParallelRunner and
    Dask can ship it) that keeps the function's name and signature for Kedro's logs and
    type checks. A subclass, because multiprocessing pickles a plain ``partial`` without
    its attributes."""


def for_partition(function, **bound) -> PartitionFunction:
    """``function`` bound to one partition (``subject`` and ``run``, or ``subjects`` and
    ``run``)."""
    return update_wrapper(PartitionFunction(function, **bound), function)


def create_pipeline(partitions: Partitions, **kwargs) -> Pipeline:
    """The fMRI stage for these partitions: the first pass per (subject, run), the second
    per (group of subjects, run)."""
    moments = {name: MOMENTS_DATASET.format(partition=name) for name in partitions.statistics()}
    sums = {name: GROUP_SUM_DATASET.format(partition=name) for name in partitions.groups()}
    keep = partitions.keep_decompressed
    voxels = {name: VOXELS_DATASET.format(partition=name) for name in partitions.statistics()}
    statistics = [
        node(for_partition(run_statistics_and_voxels if keep else run_statistics, subject=sid, run=run),
             ["fmri_raw", "fmri_mask_input", "fmri_confounds", "fmri_split", "params:fmri"],
             [moments[name], voxels[name]] if keep else moments[name],
             name=f"fmri_statistics_{name}", tags=["fmri_map"])
        for name, (sid, run) in partitions.statistics().items()
    ]
    normalize = []
    for name, (subjects, run) in partitions.groups().items():
        kept = {partition_name(sid, run): voxels[partition_name(sid, run)] for sid in subjects} if keep else {}
        normalize.append(node(
            for_partition(normalized_group, subjects=subjects, run=run),
            {"runs": "fmri_raw", "confounds": "fmri_confounds", "stats": "fmri_norm_stats", "split": "fmri_split",
             "fmri": "params:fmri"} | kept,
            [sums[name], GROUP_ROWS_DATASET.format(partition=name)],
            name=f"fmri_normalize_{name}", tags=["fmri_map"]))
    return Pipeline([
        node(inspect_runs, ["fmri_raw", "params:fmri"], "fmri_subjects", name="inspect_fmri_runs"),
        node(make_split, ["fmri_subjects", "params:fmri"], "fmri_split", name="split_fmri_trs"),
        *statistics,
        node(combine_statistics,
             {"runs": "fmri_raw", "mask_file": "fmri_mask_input", "split": "fmri_split", "fmri": "params:fmri"}
             | moments,
             ["fmri_norm_stats", "fmri_cleaning_report"], name="compute_fmri_norm_stats", tags=["fmri_reduce"]),
        *normalize,
        node(combine_normalized, {"stats": "fmri_norm_stats", "fmri": "params:fmri"} | sums,
             ["fmri_train", "fmri_train_valid"], name="build_fmri_tensor", tags=["fmri_reduce"]),
        node(normalize_heldout, ["fmri_heldout_raw", "fmri_heldout_confounds", "fmri_norm_stats", "params:fmri"],
             "fmri_heldout_normalized", name="normalize_fmri_heldout"),
    ])

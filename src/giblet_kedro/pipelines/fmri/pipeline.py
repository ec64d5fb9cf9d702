"""fMRI stage: raw runs -> subject table -> split -> norm stats -> training tensor.

The two passes over the data are map-reduce, one node per (subject, run) partition
(:mod:`giblet_kedro.fmri.partials`): ``kedro run --runner=ParallelRunner`` or the Dask
runner reads runs in parallel, and a killed run resumes from the partitions it finished.
"""

from functools import partial

from kedro.pipeline import Pipeline, node

from giblet_kedro.fmri.partials import MOMENTS_DATASET, ZSCORED_DATASET, RunKey, partition_names
from giblet_kedro.pipelines.fmri.nodes import (
    combine_normalized,
    combine_statistics,
    inspect_runs,
    make_split,
    normalize_heldout,
    normalized_run,
    run_statistics,
)


def for_partition(function, subject: str, run: str) -> partial:
    """``function`` bound to one (subject, run) (a partial: picklable, so ParallelRunner
    and Dask can ship it)."""
    return partial(function, subject=subject, run=run)


def create_pipeline(partitions: list[RunKey], **kwargs) -> Pipeline:
    """The fMRI stage for these (subject, run) partitions (the experiment's
    ``fmri.run_keys``)."""
    names = partition_names(partitions)
    moments = {name: MOMENTS_DATASET.format(partition=name) for name in names}
    normalized = {name: ZSCORED_DATASET.format(partition=name) for name in names}
    statistics = [
        node(for_partition(run_statistics, *key),
             ["fmri_raw", "fmri_mask_input", "fmri_confounds", "fmri_split", "params:fmri"], moments[name],
             name=f"fmri_statistics_{name}", tags=["fmri_map"])
        for name, key in names.items()
    ]
    normalize = [
        node(for_partition(normalized_run, *key),
             ["fmri_raw", "fmri_confounds", "fmri_norm_stats", "fmri_split", "params:fmri"], normalized[name],
             name=f"fmri_normalize_{name}", tags=["fmri_map"])
        for name, key in names.items()
    ]
    return Pipeline([
        node(inspect_runs, ["fmri_raw", "params:fmri"], "fmri_subjects", name="inspect_fmri_runs"),
        node(make_split, ["fmri_subjects", "params:fmri"], "fmri_split", name="split_fmri_trs"),
        *statistics,
        node(combine_statistics,
             {"runs": "fmri_raw", "mask_file": "fmri_mask_input", "split": "fmri_split", "fmri": "params:fmri"}
             | moments,
             ["fmri_norm_stats", "fmri_cleaning_report"], name="compute_fmri_norm_stats", tags=["fmri_reduce"]),
        *normalize,
        node(combine_normalized, {"stats": "fmri_norm_stats", "fmri": "params:fmri"} | normalized,
             ["fmri_train", "fmri_train_valid"], name="build_fmri_tensor", tags=["fmri_reduce"]),
        node(normalize_heldout, ["fmri_heldout_raw", "fmri_heldout_confounds", "fmri_norm_stats", "params:fmri"],
             "fmri_heldout_normalized", name="normalize_fmri_heldout"),
    ])

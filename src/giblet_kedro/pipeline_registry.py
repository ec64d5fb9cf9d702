"""Project pipelines.

- ``demo_data``: generate the demo dataset (run automatically for specs with ``demo:``).
- ``fmri``: the fMRI stage.
- ``stimulus``: the stimulus stage (and the fMRI TR grid it aligns to).
- ``train``: the whole workflow: fMRI, stimulus, training, verification.
- ``evaluate``: held-out prediction, noise ceiling, ridge reference, reconstruction
  (and everything it needs).
- ``lesion``: decode the stimulus from brain activity with regions silenced.
- ``report``: evaluate + lesion (when the spec has one) + the HTML report.
- ``__default__``: everything, for ``kedro run`` and lineage review in ``kedro viz``.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from giblet_kedro.pipelines import demo_data, evaluate, fmri, lesion, report, stimulus, train
from giblet_kedro.pipelines.partitions import active_partitions


def register_pipelines() -> dict[str, Pipeline]:
    # fMRI map-reduce: one node per (subject, run) of the experiment being run.
    partitions = active_partitions()
    fmri_pipeline = fmri.pipeline.create_pipeline(partitions)
    demo_pipeline = demo_data.pipeline.create_pipeline()
    stimulus_pipeline = stimulus.pipeline.create_pipeline()
    train_pipeline = train.pipeline.create_pipeline()
    evaluate_pipeline = evaluate.pipeline.create_pipeline(partitions)
    lesion_pipeline = lesion.pipeline.create_pipeline()
    workflow = fmri_pipeline + stimulus_pipeline + train_pipeline
    report_pipeline = report.pipeline.create_pipeline()
    # `stimulus` includes the fMRI nodes its TR grid comes from (Kedro runs what a
    # pipeline lists; cached nodes are skipped).
    return {
        "demo_data": demo_pipeline,
        "fmri": fmri_pipeline,
        "stimulus": fmri_pipeline.only_nodes("inspect_fmri_runs", "split_fmri_trs") + stimulus_pipeline,
        "train": workflow,
        "evaluate": workflow + evaluate_pipeline,
        "lesion": workflow + lesion_pipeline,
        "report": workflow + evaluate_pipeline + lesion_pipeline + report_pipeline,
        "__default__": demo_pipeline + workflow + evaluate_pipeline + lesion_pipeline + report_pipeline,
    }

"""Project pipelines.

- ``demo_data``: generate the demo dataset (run automatically for specs with ``demo:``).
- ``fmri``: the fMRI stage.
- ``train``: the whole workflow (grows as later stages land).
- ``__default__``: everything, for ``kedro run`` and lineage review in ``kedro viz``.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from giblet_kedro.pipelines import demo_data, fmri


def register_pipelines() -> dict[str, Pipeline]:
    fmri_pipeline = fmri.pipeline.create_pipeline()
    demo_pipeline = demo_data.pipeline.create_pipeline()
    return {
        "demo_data": demo_pipeline,
        "fmri": fmri_pipeline,
        "train": fmri_pipeline,
        "__default__": demo_pipeline + fmri_pipeline,
    }

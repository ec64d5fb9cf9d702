"""Project pipelines.

- ``demo_data``: generate the demo dataset (run automatically for specs with ``demo:``).
- ``fmri``: the fMRI stage.
- ``stimulus``: the stimulus stage (and the fMRI TR grid it aligns to).
- ``train``: the whole workflow: fMRI, stimulus, training, verification.
- ``evaluate``: held-out prediction, noise ceiling, ridge reference, reconstruction
  (and everything it needs).
- ``lesion``: decode the stimulus from brain activity with regions silenced.
- ``report``: evaluate + lesion (when the spec has one) + the HTML report.
- ``predict``: in silico: a movie (``predict.stimulus``) -> the predicted response,
  region time courses, modality ablations, held-out runs scored. Not in ``__default__``
  (it extracts the movie's features again); ``kedro viz`` lists it on its own.
- ``__default__``: everything, for ``kedro run`` and lineage review in ``kedro viz``.

``kedro run --pipelines=fmri`` builds (and imports the nodes of) only the pipelines it
asks for: the fMRI stage does not pay for importing torch, the stimulus models or the
evaluation (about 2 s of every run's start-up).
"""

from __future__ import annotations

import importlib

from kedro.pipeline import Pipeline

from giblet_kedro.pipelines.partitions import active_partitions, kedro_request

# Each registered pipeline as the sum of its parts (pipeline modules under
# ``giblet_kedro.pipelines``; "fmri_grid" is the part of the fMRI stage the stimulus
# stage's TR grid comes from).
PARTS: dict[str, tuple[str, ...]] = {
    "demo_data": ("demo_data",),
    "fmri": ("fmri",),
    "stimulus": ("fmri_grid", "stimulus"),
    "train": ("fmri", "stimulus", "train"),
    "evaluate": ("fmri", "stimulus", "train", "evaluate"),
    "lesion": ("fmri", "stimulus", "train", "lesion"),
    "report": ("fmri", "stimulus", "train", "evaluate", "lesion", "report"),
    "predict": ("fmri", "stimulus", "train", "predict"),
    "__default__": ("demo_data", "fmri", "stimulus", "train", "evaluate", "lesion", "report"),
}


def requested_pipelines() -> list[str] | None:
    """The pipelines this ``kedro run`` asked for (``--pipelines``), or None for all
    (no session, ``kedro viz``, a name Kedro does not know)."""
    requested = kedro_request()
    if not requested or not set(requested) <= set(PARTS):
        return None
    return list(requested)


def register_pipelines(names: list[str] | None = None) -> dict[str, Pipeline]:
    """The pipelines ``names`` (default: those requested, else all), each built from its
    parts (Kedro runs what a pipeline lists; cached nodes are skipped). The fMRI stage and
    the evaluation have nodes per partition of the experiment being run."""
    names = names or requested_pipelines() or list(PARTS)
    partitions = active_partitions()
    parts: dict[str, Pipeline] = {}

    def part(name: str) -> Pipeline:
        if name not in parts:
            if name == "fmri_grid":
                parts[name] = part("fmri").only_nodes("inspect_fmri_runs", "split_fmri_trs")
            else:
                module = importlib.import_module(f"giblet_kedro.pipelines.{name}.pipeline")
                parts[name] = module.create_pipeline(partitions=partitions)
        return parts[name]

    return {name: sum((part(p) for p in PARTS[name]), Pipeline([])) for name in names}

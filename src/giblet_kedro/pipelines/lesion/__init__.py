"""Lesion: silence regions of the brain, decode the stimulus from what is left."""

from giblet_kedro.pipelines.lesion import pipeline  # noqa: F401

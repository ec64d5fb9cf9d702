"""Evaluate: held-out prediction, noise ceiling, ridge reference, reconstruction."""

from giblet_kedro.pipelines.evaluate import pipeline  # noqa: F401

"""The HTML report: verification, evaluation and lesions in one self-contained file."""

from giblet_kedro.pipelines.report import pipeline

__all__ = ["pipeline"]

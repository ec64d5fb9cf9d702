"""In silico: predict the brain's response to a movie; what each modality drives."""

from giblet_kedro.pipelines.predict import pipeline  # noqa: F401

from giblet_kedro.pipelines.stimulus import pipeline  # noqa: F401

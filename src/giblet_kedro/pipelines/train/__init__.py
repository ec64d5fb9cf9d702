from giblet_kedro.pipelines.train import pipeline  # noqa: F401

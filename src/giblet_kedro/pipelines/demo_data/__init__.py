from giblet_kedro.pipelines.demo_data import pipeline  # noqa: F401

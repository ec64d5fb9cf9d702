from giblet_kedro.pipelines.fmri import pipeline  # noqa: F401

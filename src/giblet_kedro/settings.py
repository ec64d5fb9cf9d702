"""Project settings: the spec resolvers and overrides for catalog and parameters, and the
hooks that hold on every path that runs a pipeline (:mod:`giblet_kedro.hooks`)."""

import importlib.util
import os
import warnings

from giblet_kedro.config_loader import GibletConfigLoader
from giblet_kedro.hooks import GibletHooks
from giblet_kedro.spec.resolvers import RESOLVERS

CONFIG_LOADER_CLASS = GibletConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": RESOLVERS,
}

# Kedro 1.7 itself still calls OmegaConf's deprecated register_new_resolver(); the warning
# is about Kedro's code, not this project's, and would bury real warnings on every run.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)

HOOKS: tuple = (GibletHooks(),)
if importlib.util.find_spec("kedro_mlflow") is not None:  # the optional tracking extra
    from giblet_kedro.tracking import MlflowHooks, spec_only_mlflow_hook

    # conf/base/mlflow.yml logs to a local file store (mlruns/), which MLflow 3.17 keeps in
    # maintenance mode behind this switch; conf/local/mlflow.yml can name sqlite or a server.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    HOOKS += (MlflowHooks(), spec_only_mlflow_hook())  # the order Kedro gave the plugin: last
    DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")  # its hook is registered above, less node params

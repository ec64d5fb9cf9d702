"""Project settings: the spec resolvers for catalog and parameters."""

from kedro.config import OmegaConfigLoader

from giblet_kedro.spec.resolvers import RESOLVERS

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": RESOLVERS,
}

"""The project's config loader: Kedro's ``OmegaConfigLoader``, with ``--params`` overrides
of spec keys applied to the spec instead of to Kedro's parameters.

``kedro run --params experiment=X,train.epochs=50`` reaches Kedro as the runtime params
``{"experiment": "X", "train": {"epochs": 50}}``. Merged into ``parameters.yml`` as Kedro
does, ``train`` would replace the whole compiled ``train`` section and the fingerprints,
computed from the spec file, would not change. Here the spec keys are taken out of the
runtime params and carried, with the spec's path, in the experiment *reference* that
``${giblet.experiment:NAME}`` returns and every catalog and parameter resolver receives
(:mod:`giblet_kedro.spec.reference`). The spec name is looked up in ``conf/<env>/experiments/``
first, then ``conf/base/experiments/``.
"""

from __future__ import annotations

from typing import Any

from kedro.config import OmegaConfigLoader
from omegaconf import OmegaConf

from giblet_kedro.spec.load import find_spec_file
from giblet_kedro.spec.reference import make_reference, split_runtime_params


class GibletConfigLoader(OmegaConfigLoader):
    """``OmegaConfigLoader`` whose runtime params that are spec keys override the spec."""

    def __init__(self, conf_source: str, env: str | None = None, runtime_params: dict[str, Any] | None = None,
                 **kwargs: Any):
        project_params, self.spec_overrides = split_runtime_params(runtime_params)
        super().__init__(conf_source, env=env, runtime_params=project_params, **kwargs)

    def experiment_reference(self, name: Any) -> str:
        """``${giblet.experiment:NAME}``: the spec's absolute path plus this run's overrides."""
        path = find_spec_file(str(name), self.env or self.default_run_env)
        return make_reference(str(path), self.spec_overrides)

    def run_reference(self) -> str:
        """The reference of the experiment this configuration runs: ``--params
        experiment=...``, else the globals' ``default_experiment``."""
        name = (self.runtime_params or {}).get("experiment") or self["globals"].get("default_experiment", "demo")
        return self.experiment_reference(name)

    def __getitem__(self, key: str) -> Any:
        # Registered on every access, as Kedro does for runtime_params: the resolver is
        # process-global and must answer with this loader's overrides.
        OmegaConf.register_resolver("giblet.experiment", self.experiment_reference, replace=True)
        return super().__getitem__(key)

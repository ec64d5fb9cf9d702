"""giblet-kedro: declarative experiment specs compiled into reproducible Kedro pipelines
for multimodal naturalistic-fMRI deep learning."""

__version__ = "0.1.0"

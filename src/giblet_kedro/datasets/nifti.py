"""NIfTI datasets (nibabel): lazy loads, atomic saves, scale factors honoured."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
from kedro.io import AbstractDataset
from kedro_datasets._typing import JSONPreview

from giblet_kedro.datasets.atomic import atomic_path, intact
from giblet_kedro.datasets.preview import nifti_summary, to_json
from giblet_kedro.errors import InputDataError


def load_nifti(path: str | Path, label: str) -> nib.Nifti1Image:
    """Open a NIfTI image lazily (header now, voxel data on access).

    ``label`` names the spec key or subject in error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{label}: file not found: {path}")
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputDataError(
            f"{label}: {path} is not a readable NIfTI image ({type(exc).__name__}: {exc}); "
            "accepted: NIfTI-1/2 files (.nii or .nii.gz)"
        ) from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputDataError(
            f"{label}: {path} is a {type(image).__name__}, accepted: NIfTI-1/2 (.nii or .nii.gz)"
        )
    return image


def save_nifti(image: nib.Nifti1Image, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


class NiftiDataset(AbstractDataset[nib.Nifti1Image, nib.Nifti1Image]):
    """One NIfTI file. ``load`` returns a lazy ``Nifti1Image`` (data read on access)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> nib.Nifti1Image:
        return load_nifti(self._filepath, label=str(self._filepath))

    def save(self, data: nib.Nifti1Image) -> None:
        save_nifti(data, self._filepath)

    def _exists(self) -> bool:
        return intact(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def preview(self) -> JSONPreview:
        """kedro-viz: shape, affine, voxel size, TR (header only)."""
        if not self._filepath.is_file():
            return JSONPreview('{"status": "not computed yet"}')
        return JSONPreview(to_json(nifti_summary(self.load())))


def _label(key: str) -> str:
    """``"01/2"`` -> ``subject '01' run '2'``; a plain key (held-out runs) -> ``subject '01'``."""
    subject, _, run = key.partition("/")
    return f"subject {subject!r}" + (f" run {run!r}" if run else "")


class LazyRuns(Mapping):
    """``{key: lazy Nifti1Image}`` whose headers are read on first access: a map node of
    the fMRI stage touches its own run only, not every subject's."""

    def __init__(self, paths: dict[str, Path]):
        self._paths = paths
        self._images: dict[str, nib.Nifti1Image] = {}

    def __getitem__(self, key: str) -> nib.Nifti1Image:
        if key not in self._images:
            self._images[key] = load_nifti(self._paths[key], label=_label(key))  # KeyError if unknown
        return self._images[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


class NiftiRunsDataset(AbstractDataset[Mapping[str, nib.Nifti1Image], dict[str, nib.Nifti1Image]]):
    """A set of runs keyed by subject id, each a NIfTI file anywhere on disk.

    ``load`` returns ``{subject_id: lazy Nifti1Image}`` (a read-only mapping); nothing
    but headers is read, and each header when it is first asked for. ``save`` writes
    each image atomically to its configured path.
    """

    def __init__(self, paths: dict[str, str], metadata: dict[str, Any] | None = None):
        self._paths = {str(k): Path(v) for k, v in dict(paths).items()}
        self.metadata = metadata

    def load(self) -> Mapping[str, nib.Nifti1Image]:
        return LazyRuns(self._paths)

    def save(self, data: dict[str, nib.Nifti1Image]) -> None:
        unknown = sorted(set(data) - set(self._paths))
        if unknown:
            raise ValueError(f"no configured path for subjects {unknown}; configured: {sorted(self._paths)}")
        for sid, image in data.items():
            save_nifti(image, self._paths[sid])

    def _exists(self) -> bool:
        return bool(self._paths) and intact(*self._paths.values())

    def _describe(self) -> dict[str, Any]:
        return {"paths": {k: str(v) for k, v in self._paths.items()}}

    def preview(self) -> JSONPreview:
        """kedro-viz: each run's geometry and TR (headers only)."""
        return JSONPreview(to_json({key: nifti_summary(load_nifti(path, _label(key))) if path.is_file()
                                    else {"file": str(path), "status": "missing (generated or not yet written)"}
                                    for key, path in self._paths.items()}))

"""Training samples, read by path from the memory-mapped caches.

Workers receive file paths, never arrays: each process memory-maps the caches itself, so
the page cache holds one copy whatever the number of ranks. The stimulus is stored once:
``per_subject`` indexes (subject, TR) into it instead of copying it per subject (the
lab's per-subject cache reached 58 GB).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from giblet_kedro.training.job import ArrayPaths, fmri_sample_validity
from giblet_kedro.training.losses import ModalityStats


class TrDataset(Dataset):
    """Samples of the given TR rows.

    ``cross_subject``: one sample per TR (fMRI (n_trs, V)). ``per_subject``: one sample per
    (subject, TR) (fMRI (S, n_trs, V)); sample ``i`` is subject ``i // n_rows``.

    Each item: ``fmri`` (V,) and continuous modalities standardized per feature with
    ``stats``; ``audio`` codes as int64 when ``audio_is_codes``; ``<name>_valid`` flags
    (False for every modality at a censored fMRI volume, see :mod:`giblet_kedro.fmri.censor`);
    ``subject`` and ``row`` (what was drawn, for the verification's sample count).
    """

    def __init__(self, paths: ArrayPaths, rows: np.ndarray, mode: str, stats: dict[str, ModalityStats],
                 audio_is_codes: bool):
        self.paths, self.rows, self.mode = paths, np.asarray(rows, dtype=np.int64), mode
        self.stats, self.audio_is_codes = stats, audio_is_codes
        fmri = np.load(paths.fmri, mmap_mode="r")
        self.n_subjects = fmri.shape[0] if mode == "per_subject" else 1
        self._arrays: dict[str, np.ndarray] | None = None

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:  # opened in the process that reads (after spawn)
            arrays = {"fmri": np.load(self.paths.fmri, mmap_mode="r")}
            if self.paths.fmri_valid:
                arrays["fmri_covered"] = np.load(self.paths.fmri_valid)
            for name, path in self.paths.values.items():
                arrays[name] = np.load(path, mmap_mode="r")
                arrays[f"{name}_valid"] = np.load(self.paths.valid[name])
            self._arrays = arrays
        return self._arrays

    def __len__(self) -> int:
        return len(self.rows) * self.n_subjects

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """A whole batch with one vectorized read per array (the DataLoader calls this
        with the sampler's indices; pair it with :func:`identity_collate`)."""
        arrays = self._open()
        subjects, positions = np.divmod(np.asarray(indices, dtype=np.int64), len(self.rows))
        trs = self.rows[positions]
        fmri = arrays["fmri"][subjects, trs] if self.mode == "per_subject" else arrays["fmri"][trs]
        # A censored volume (scrubbing) is no sample: its fMRI and its stimulus count for nothing.
        fmri_valid = fmri_sample_validity(arrays.get("fmri_covered"), self.mode, subjects, trs)
        batch = {"fmri": self._standardize("fmri", fmri), "fmri_valid": torch.from_numpy(fmri_valid),
                 "subject": torch.from_numpy(subjects), "row": torch.from_numpy(trs)}
        for name in self.paths.values:
            values = arrays[name][trs]
            if name == "audio" and self.audio_is_codes:
                batch[name] = torch.from_numpy(np.asarray(values, dtype=np.int64))
            else:
                batch[name] = self._standardize(name, values)
            batch[f"{name}_valid"] = torch.from_numpy(np.asarray(arrays[f"{name}_valid"][trs], dtype=bool) & fmri_valid)
        return batch

    def _standardize(self, name: str, value: np.ndarray) -> torch.Tensor:
        """Each feature with its own training mean and std (see :mod:`training.losses`)."""
        return torch.from_numpy(self.stats[name].standardize(value))


def identity_collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``TrDataset.__getitems__`` already returns a collated batch."""
    return batch

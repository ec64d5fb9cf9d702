"""Training samples, read by path from the memory-mapped caches.

Workers receive file paths, never arrays: each process memory-maps the caches itself, so
the page cache holds one copy whatever the number of ranks. The stimulus is stored once:
``per_subject`` indexes (subject, TR) into it instead of copying it per subject (the
original per-subject cache reached 58 GB).

Two readers:

- :class:`WindowDataset`, what training draws: a sample is a window of contiguous TRs of
  one run (:func:`plan_windows`): the model's inputs for every TR of the window, and the
  targets (fMRI, each modality's reconstruction target) of its last TRs;
- :class:`TrDataset`: the targets of given TR rows, for the evaluation and the checks.

The model's inputs are each TR's stimulus features as extracted (no HRF: the model learns
the lags); the decoders' targets and the ridge's features are the HRF-aligned caches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from giblet_kedro.training.job import ArrayPaths, fmri_sample_validity
from giblet_kedro.training.losses import ModalityStats

INPUT_PREFIX = "input_"  # loss_stats entries of the model's inputs, where they differ from the targets


def input_stats(stats: dict[str, ModalityStats], name: str) -> ModalityStats:
    """The statistics the model's ``name`` input is standardized with: its own when the
    inputs are not the targets (``input_<name>``), else the target's."""
    return stats.get(f"{INPUT_PREFIX}{name}", stats[name])


def run_index(run_starts: np.ndarray, n_rows: int) -> np.ndarray:
    """(n_rows,) the run each row belongs to; ``run_starts`` (n_runs,) sorted first rows."""
    return np.searchsorted(np.asarray(run_starts, dtype=np.int64), np.arange(n_rows), side="right") - 1


def plan_windows(rows: np.ndarray, run_starts: np.ndarray, n_rows: int, n_lags: int, window_trs: int) -> np.ndarray:
    """The windows that make ``rows`` (sorted, one split's) targets once each.

    Rows are cut into stretches of consecutive rows within one run, and each stretch into
    pieces of at most ``window_trs - (n_lags - 1)`` targets; a piece's window starts
    ``n_lags - 1`` rows before its first target (its context: stimulus only, whatever its
    split), clipped at its run's first row.

    Returns (n_windows, 3) int64: first row of the window, first target row, one past the
    last target row.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    per_window = window_trs - (n_lags - 1)
    if per_window < 1:
        raise ValueError(f"a window of {window_trs} TRs holds no target after {n_lags - 1} TRs of context")
    runs = run_index(run_starts, n_rows)[rows]
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(runs) != 0)) + 1
    windows = []
    for stretch in np.split(rows, breaks):
        run_start = int(np.asarray(run_starts)[runs[np.searchsorted(rows, stretch[0])]])
        for first in range(0, len(stretch), per_window):
            targets = stretch[first:first + per_window]
            windows.append((max(run_start, int(targets[0]) - (n_lags - 1)), int(targets[0]), int(targets[-1]) + 1))
    return np.asarray(windows, dtype=np.int64)


class CacheArrays:
    """The caches of a job, memory-mapped on first use in the process that reads them."""

    def __init__(self, paths: ArrayPaths):
        self.paths = paths
        self._arrays: dict[str, np.ndarray] | None = None

    def __getitem__(self, key: str) -> np.ndarray:
        if self._arrays is None:  # opened in the process that reads (after spawn)
            paths = self.paths
            arrays = {"fmri": np.load(paths.fmri, mmap_mode="r")}
            if paths.fmri_valid:
                arrays["fmri_covered"] = np.load(paths.fmri_valid)
            for name, path in paths.values.items():
                arrays[name] = np.load(path, mmap_mode="r")
                arrays[f"{name}_valid"] = np.load(paths.valid[name])
            for name, path in paths.model_inputs.items():
                arrays[f"{INPUT_PREFIX}{name}"] = np.load(path, mmap_mode="r")
                arrays[f"{INPUT_PREFIX}{name}_valid"] = np.load(paths.model_inputs_valid[name])
            self._arrays = arrays
        return self._arrays[key]

    def get(self, key: str) -> np.ndarray | None:
        try:
            return self[key]
        except KeyError:
            return None


def _standardize(stats: ModalityStats, values: np.ndarray) -> torch.Tensor:
    """Each feature with its own training mean and std (see :mod:`training.losses`)."""
    return torch.from_numpy(stats.standardize(values))


class _CachedSamples(Dataset):
    """What both readers share: the job's caches (memory-mapped on first read), the
    dataset mode and the statistics; in ``per_subject`` one sample per subject of each
    row or window (sample ``i`` is subject ``i // n``)."""

    def __init__(self, paths: ArrayPaths, mode: str, stats: dict[str, ModalityStats], audio_is_codes: bool):
        self.paths, self.mode, self.stats, self.audio_is_codes = paths, mode, stats, audio_is_codes
        fmri = np.load(paths.fmri, mmap_mode="r")
        self.n_rows = fmri.shape[-2]
        self.n_subjects = fmri.shape[0] if mode == "per_subject" else 1
        self.arrays = CacheArrays(paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


class TrDataset(_CachedSamples):
    """The targets of the given TR rows.

    ``cross_subject``: one sample per TR (fMRI (n_trs, V)). ``per_subject``: one sample per
    (subject, TR) (fMRI (S, n_trs, V)); sample ``i`` is subject ``i // n_rows``.

    Each item: ``fmri`` (V,) and continuous modalities standardized per feature with
    ``stats``; ``audio`` codes as int64 when ``audio_is_codes``; ``<name>_valid`` flags
    (False for every modality at a censored fMRI volume, see :mod:`giblet_kedro.fmri.censor`);
    ``subject`` and ``row``.
    """

    def __init__(self, paths: ArrayPaths, rows: np.ndarray, mode: str, stats: dict[str, ModalityStats],
                 audio_is_codes: bool):
        super().__init__(paths, mode, stats, audio_is_codes)
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows) * self.n_subjects

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """A whole batch with one vectorized read per array."""
        subjects, positions = np.divmod(np.asarray(indices, dtype=np.int64), len(self.rows))
        trs = self.rows[positions]
        fmri = self.arrays["fmri"][subjects, trs] if self.mode == "per_subject" else self.arrays["fmri"][trs]
        # A censored volume (scrubbing) is no sample: its fMRI and its stimulus count for nothing.
        fmri_valid = fmri_sample_validity(self.arrays.get("fmri_covered"), self.mode, subjects, trs)
        batch = {"fmri": _standardize(self.stats["fmri"], fmri), "fmri_valid": torch.from_numpy(fmri_valid),
                 "subject": torch.from_numpy(subjects), "row": torch.from_numpy(trs)}
        for name in self.paths.values:
            values = self.arrays[name][trs]
            if name == "audio" and self.audio_is_codes:
                batch[name] = torch.from_numpy(np.asarray(values, dtype=np.int64))
            else:
                batch[name] = _standardize(self.stats[name], values)
            batch[f"{name}_valid"] = torch.from_numpy(np.asarray(self.arrays[f"{name}_valid"][trs], dtype=bool)
                                                      & fmri_valid)
        return batch


def model_inputs(arrays: CacheArrays, paths: ArrayPaths, stats: dict[str, ModalityStats], rows: np.ndarray,
                 audio_is_codes: bool) -> dict[str, np.ndarray]:
    """The model's inputs (standardized; codes as int64) of ``rows`` (any shape; -1: no
    TR) per modality, and ``<name>_valid``. A TR the stimulus does not cover gets the
    training mean (0; codes: each codebook's most frequent training code), as in silico
    (:func:`giblet_kedro.evaluation.insilico.model_inputs`); so does padding."""
    rows = np.asarray(rows, dtype=np.int64)
    real = rows >= 0
    safe = np.where(real, rows, 0)
    out: dict[str, np.ndarray] = {}
    for name in paths.values:
        key = f"{INPUT_PREFIX}{name}" if name in paths.model_inputs else name
        values = np.asarray(arrays[key][safe.ravel()])
        valid = (np.asarray(arrays[f"{key}_valid"][safe], dtype=bool) & real).ravel()
        if name == "audio" and audio_is_codes:
            values = values.astype(np.int64)
            values[~valid] = stats[name].mode_codes()[:, None]
        else:
            values = input_stats(stats, name).standardize(values)
            values[~valid] = 0
        out[name] = values.reshape(*rows.shape, *values.shape[1:])
        out[f"{name}_valid"] = valid.reshape(rows.shape)
    return out


class WindowDataset(_CachedSamples):
    """Training windows: (subject, window) pairs, ``windows`` from :func:`plan_windows`.

    Each item, for a window of ``window_trs`` TRs (left-padded when clipped at a run's
    start): every modality's model input (T, *sample) and ``present`` (T,) (a real TR,
    not padding); the targets at every TR (fMRI standardized, each modality's
    reconstruction target), with ``fmri_valid`` and ``<name>_valid`` (T,) True only at
    the window's target TRs that count: uncensored, and with the whole context inside
    their run (the first ``n_lags - 1`` TRs of a run are not trained on); ``subject`` and
    ``row`` (T,) (-1 for padding).
    """

    def __init__(self, paths: ArrayPaths, windows: np.ndarray, mode: str, stats: dict[str, ModalityStats],
                 audio_is_codes: bool, run_starts: np.ndarray, n_lags: int, window_trs: int):
        super().__init__(paths, mode, stats, audio_is_codes)
        self.windows = np.asarray(windows, dtype=np.int64)
        self.run_starts, self.n_lags, self.window_trs = np.asarray(run_starts, dtype=np.int64), n_lags, window_trs

    def __len__(self) -> int:
        return len(self.windows) * self.n_subjects

    def window_rows(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n, window_trs), target (n, window_trs) bool) of windows (n, 3): rows end at
        the last target and run back ``window_trs`` TRs; -1 before the window's first row."""
        stop = windows[:, 2:3]
        rows = stop - self.window_trs + np.arange(self.window_trs)[None, :]
        rows = np.where(rows >= windows[:, 0:1], rows, -1)
        return rows, rows >= windows[:, 1:2]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        subjects, positions = np.divmod(np.asarray(indices, dtype=np.int64), len(self.windows))
        rows, target = self.window_rows(self.windows[positions])
        real = rows >= 0
        safe = np.where(real, rows, 0)
        runs = run_index(self.run_starts, self.n_rows)
        complete = real & (safe - self.run_starts[runs[safe]] >= self.n_lags - 1)
        flat_subjects = np.repeat(subjects, rows.shape[1])
        covered = fmri_sample_validity(self.arrays.get("fmri_covered"), self.mode, flat_subjects,
                                       safe.ravel()).reshape(rows.shape)
        counted = target & complete & covered
        fmri = (self.arrays["fmri"][flat_subjects, safe.ravel()] if self.mode == "per_subject"
                else self.arrays["fmri"][safe.ravel()])
        fmri = self.stats["fmri"].standardize(fmri)
        fmri[~counted.ravel()] = 0
        batch = {"fmri": torch.from_numpy(fmri.reshape(*rows.shape, -1)), "fmri_valid": torch.from_numpy(counted),
                 "present": torch.from_numpy(real), "subject": torch.from_numpy(subjects),
                 "row": torch.from_numpy(np.where(real, rows, -1))}
        inputs = model_inputs(self.arrays, self.paths, self.stats, rows, self.audio_is_codes)
        for name in self.paths.values:
            batch[f"input_{name}"] = torch.from_numpy(inputs[name])
            values = np.asarray(self.arrays[name][safe.ravel()])
            if name == "audio" and self.audio_is_codes:
                targets = values.astype(np.int64)
            else:
                targets = self.stats[name].standardize(values)
            batch[name] = torch.from_numpy(targets.reshape(*rows.shape, *targets.shape[1:]))
            valid = np.asarray(self.arrays[f"{name}_valid"][safe], dtype=bool)
            batch[f"{name}_valid"] = torch.from_numpy(valid & counted)
        return batch


def identity_collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``__getitems__`` already returns a collated batch."""
    return batch

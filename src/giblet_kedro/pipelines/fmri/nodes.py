"""fMRI stage nodes: check runs -> split -> per-run stats -> training tensor.

Nodes receive lazy NIfTI images (headers only) from the catalog, keyed
``"<subject>/<run>"``, and stream voxel data through :mod:`giblet_kedro.fmri`; every
output is a catalog dataset. Each run is cropped, optionally cleaned (nilearn), and
z-scored with its own statistics; runs are concatenated in time, then subjects averaged
(or stacked).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri import censor
from giblet_kedro.fmri.checks import check_runs, check_space, check_tr, resolve_crop
from giblet_kedro.fmri.kept import KeptVoxels, VoxelKeeper
from giblet_kedro.fmri.normalize import (
    RunSource,
    combine_groups,
    combine_subjects,
    normalize_source,
    release_pages,
)
from giblet_kedro.fmri.partials import (
    RunKey,
    by_group,
    moments_from_arrays,
    moments_to_arrays,
    partition_name,
    partition_names,
    val_test_rows,
)
from giblet_kedro.fmri.reader import RunHeader, mask_columns, read_header
from giblet_kedro.fmri.sources import (
    run_censored,
    run_confounds,
    run_headers,
    run_label,
    run_operator,
    run_source,
    saved_crops,
    subject_sources,
)
from giblet_kedro.fmri.split import (
    auto_gap_trs,
    blocks,
    concatenate_runs,
    run_crops,
    split_table,
    stats_rows,
    train_rows,
    whole_run_table,
)
from giblet_kedro.fmri.stats import (
    SubjectMoments,
    auto_mask,
    check_mask_usable,
    check_not_flat,
    cleaned_moments,
    lab_mask,
    pooled_training_stats,
    subject_moments,
)
from giblet_kedro.progress import progress
from giblet_kedro.spec.schema import GAP_SECONDS, FmriSpec, run_key

log = logging.getLogger(__name__)

def inspect_runs(runs: dict[str, nib.Nifti1Image], fmri: FmriSpec) -> pd.DataFrame:
    """Check every run's header against the spec and the others; describe them.

    Returns the subject table: one row per subject and run with its file, grid, TR
    count, TR, storage type, scale factors and the TR range (crop) it contributes.
    """
    headers = run_headers(runs, fmri)
    check_runs(list(headers.values()), fmri.tr)
    crops = {}
    for run in fmri.run_ids:
        key = f"fmri.runs[{run!r}].trs" if fmri.runs.get(run) and fmri.runs[run].trs else "fmri.trs"
        crops[run] = resolve_crop([headers[(sid, run)] for sid in fmri.subject_ids], fmri.run_crop(run), key)
    return pd.DataFrame([
        {
            "subject_id": sid,
            "run": run,
            "path": str(h.path),
            "nx": h.grid[0], "ny": h.grid[1], "nz": h.grid[2],
            "n_trs_file": h.n_trs,
            "tr_s": h.tr_seconds if h.tr_value else fmri.tr,
            "dtype": str(h.dtype),
            "scl_slope": h.slope,
            "scl_inter": h.inter,
            "crop_start": crops[run][0],
            "crop_stop": crops[run][1],
        }
        for (sid, run), h in headers.items()
    ])


def make_split(subjects: pd.DataFrame, fmri: FmriSpec) -> pd.DataFrame:
    """The per-TR split table of the concatenated runs: contiguous train, val and test
    blocks within each run (``split.by: blocks``), or whole runs (``by: run``), with
    ``split.gap_trs`` unused TRs between two blocks of a run."""
    explicit = fmri.split.gap_trs != "auto"
    gap = int(fmri.split.gap_trs) if explicit else auto_gap_trs(fmri.tr, GAP_SECONDS)
    tables = []
    for run in fmri.run_ids:
        row = subjects.loc[subjects["run"].astype(str) == run].iloc[0]
        start, stop = int(row["crop_start"]), int(row["crop_stop"])
        what = f" of run {run!r}" if len(fmri.run_ids) > 1 else ""
        if fmri.split.by == "blocks":
            tables.append(split_table(start, stop, fmri.tr, fmri.split.val, fmri.split.test, run, what, gap,
                                      explicit))
        elif fmri.split.split_of_run(run) == "train" and not isinstance(fmri.split.val, list):
            tables.append(split_table(start, stop, fmri.tr, float(fmri.split.val), 0.0, run, f" of run {run!r}",
                                      gap, explicit))
        else:
            tables.append(whole_run_table(start, stop, fmri.tr, run, fmri.split.split_of_run(run)))
    table = concatenate_runs(tables)
    n_train = int((table["split"] == "train").sum())
    if n_train < 3:
        raise InputDataError(f"fmri.split leaves {n_train} training TRs; at least 3 are needed")
    return table


def check_confound_tables(subjects: pd.DataFrame, confounds: dict[str, pd.DataFrame], fmri: FmriSpec) -> None:
    """Every confound table fits its run (rows, columns, values), from the subject table
    alone: what ``kedro run`` checks before any node runs."""
    for row in subjects.itertuples():
        sid, run = str(row.subject_id), str(row.run)
        run_confounds(fmri, int(row.n_trs_file), (int(row.crop_start), int(row.crop_stop)),
                      confounds.get(run_key(sid, run)), f"{run_label(fmri, sid, run)}: fmri.clean.confounds")


def _given_mask(mask_file: dict[str, nib.Nifti1Image], reference: RunHeader) -> np.ndarray:
    image = mask_file["mask"]
    label = f"fmri.mask ({image.get_filename()})"
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    check_space(label, data.shape, image.affine, "the runs", reference.grid, reference.affine)
    mask = np.asarray(data != 0) & np.isfinite(data)
    if not mask.any():
        raise InputDataError(f"{label} selects no voxel (all zero)")
    return mask


def _run_moments(fmri: FmriSpec, sid: str, run: str, header: RunHeader, crop, rows: np.ndarray, lab_run: str,
                 operator, columns, ddof: int, censored: np.ndarray, keeper: VoxelKeeper | None) -> SubjectMoments:
    """One run's streaming pass over its uncensored training TRs (cleaned when
    ``operator`` is given); ``keeper`` keeps what it decompressed."""
    label = run_label(fmri, sid, run)
    if censored.size:
        log.info("fmri stats: %s: %d volumes censored by the confound strategy (%d of them training TRs)", label,
                 censored.size, int(np.isin(rows, censored).sum()))
        trained, rows = rows.size > 0, np.setdiff1d(rows, censored)
        if trained and rows.size < 2:
            raise InputDataError(f"{label}: the confound strategy censors all but {rows.size} of the run's training "
                                 "TRs; its statistics cannot be computed. Relax the strategy's thresholds "
                                 "(fmri.clean.confounds.strategy_options) or leave the subject out")
    early = rows[: fmri.lab_mask.first_trs] if fmri.mask == "lab" and run == lab_run else None
    cleaned = operator is not None and rows.size
    on_raw = keeper.add if keeper is not None else None
    log.info("fmri stats: %s (%d TRs, %d training, %s%s)", label, crop[1] - crop[0], rows.size,
             header.path.name, ", cleaned" if cleaned else "")
    if cleaned:
        m = cleaned_moments(header, crop, rows, ddof, fmri.chunk_trs, operator, columns, early, on_raw)
    else:  # no cleaning, or a run held out whole: only its non-finite voxels are looked at
        m = subject_moments(header, crop, rows, ddof, fmri.chunk_trs, columns, early, on_raw)
    check_not_flat(label, m, header.path)
    return m


def _lab_run(split: pd.DataFrame, fmri: FmriSpec) -> str:
    """The run whose first training TRs the lab's mask rule reads: the first run with any."""
    return next(run for run in fmri.run_ids if stats_rows(split, run).size)


def run_statistics(runs: dict[str, nib.Nifti1Image], mask_file: dict[str, nib.Nifti1Image],
                   confounds: dict[str, pd.DataFrame], split: pd.DataFrame, fmri: FmriSpec, subject: str,
                   run: str) -> dict[str, np.ndarray]:
    """Map: one run's statistics, in one streaming pass (cleaned first, if the spec cleans).

    Returns the arrays of :func:`giblet_kedro.fmri.partials.moments_to_arrays`: the run's
    per-voxel mean, std (float64, over its uncensored training TRs), non-finite flags,
    early std (lab mask), raw variance (cleaning report) and censored TRs. Voxels: the
    whole grid, or the given mask's.
    """
    return _statistics(runs, mask_file, confounds, split, fmri, subject, run, keep=False)[0]


def run_statistics_and_voxels(runs: dict[str, nib.Nifti1Image], mask_file: dict[str, nib.Nifti1Image],
                              confounds: dict[str, pd.DataFrame], split: pd.DataFrame, fmri: FmriSpec,
                              subject: str, run: str) -> tuple[dict[str, np.ndarray], KeptVoxels]:
    """Map: :func:`run_statistics`, and the run's voxels as the pass decompressed them
    (``fmri.keep_decompressed``; see :mod:`giblet_kedro.fmri.kept`), for the second pass."""
    return _statistics(runs, mask_file, confounds, split, fmri, subject, run, keep=True)


def _statistics(runs, mask_file, confounds, split, fmri: FmriSpec, subject: str, run: str,
                keep: bool) -> tuple[dict[str, np.ndarray], KeptVoxels | None]:
    label = run_label(fmri, subject, run)
    key = run_key(subject, run)
    header = read_header(runs[key], label)
    crop = run_crops(split)[run]
    table = confounds.get(key)
    censored = run_censored(fmri, crop, table)
    operator = run_operator(fmri, header.n_trs, crop, table, f"{label}: fmri.clean.confounds", blocks(split, run),
                            censored)
    columns = mask_columns(_given_mask(mask_file, header)) if fmri.mask not in ("auto", "lab") else None
    keeper = VoxelKeeper(*crop, columns) if keep else None
    moments = _run_moments(fmri, subject, run, header, crop, stats_rows(split, run), _lab_run(split, fmri),
                           operator, columns, fmri.zscore.ddof, censored, keeper)
    arrays = moments_to_arrays(moments, subject, run, censored)
    return arrays, (keeper.result() if keeper is not None else None)


def combine_statistics(runs: dict[str, nib.Nifti1Image], mask_file: dict[str, nib.Nifti1Image],
                       split: pd.DataFrame, fmri: FmriSpec, **partials: dict[str, np.ndarray]
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reduce: the mask and ``fmri_norm_stats`` from every run's :func:`run_statistics`
    (``partials``: partition name -> its arrays, one per subject and run).

    Returns
    -------
    stats : the ``fmri_norm_stats`` arrays. ``subject_ids``, ``run_ids``; per subject
        and run ``subject_<id>_run_<run>_mean`` / ``_std`` (n_voxels,) float64 in the C
        order of ``data[mask]``; per subject ``subject_<id>_mean`` / ``_std``, pooled over
        the training TRs of all its runs (what held-out runs are normalized with; for one
        run, the run's own); ``mask`` (x, y, z) bool; ``affine`` (4, 4); ``ddof``;
        ``train_trs`` (rows of the concatenated runs); per run ``run_<run>_crop`` and
        ``run_<run>_stats_trs`` (file TRs its stats come from); ``tr``, ``mask_kind``.
    cleaning : JSON report: the settings and, per subject and run, the share of
        variance (over the mask, on the statistics TRs) that cleaning removed.
    """
    order = fmri.run_keys
    names = partition_names(order)
    missing = sorted(set(names) - set(partials))
    if missing:
        raise ValueError(f"fmri statistics: no partial statistics for {missing}")
    moments: dict[RunKey, SubjectMoments] = {}
    censored: dict[RunKey, np.ndarray] = {}
    for name, key in names.items():
        stored_key, moments[key], censored[key] = moments_from_arrays(partials[name])
        if stored_key != key:
            raise ValueError(f"fmri statistics: partition {name!r} holds {stored_key}, not {key}")
    reference = read_header(runs[run_key(*order[0])], run_label(fmri, *order[0]))
    crops = run_crops(split)
    ddof = fmri.zscore.ddof
    given = fmri.mask not in ("auto", "lab")
    train_trs = {run: stats_rows(split, run) for run in crops}  # crop-relative; empty for runs held out whole
    trained_runs = [run for run in fmri.run_ids if train_trs[run].size]
    lab_run = _lab_run(split, fmri)

    labelled = {run_label(fmri, *k): m for k, m in moments.items()}
    if given:
        mask = _given_mask(mask_file, reference)
        check_mask_usable(mask_columns(mask), labelled, reference.grid, "given", indexed=True)
        pick = slice(None)
    else:
        if fmri.mask == "auto":
            mask = auto_mask(labelled, reference.grid)
        else:
            firsts = {run_label(fmri, sid, run): m for (sid, run), m in moments.items() if run == lab_run}
            mask = lab_mask(firsts, reference.grid, fmri.lab_mask.percentile, fmri.lab_mask.min_subject_fraction)
        pick = mask_columns(mask)
        check_mask_usable(pick, labelled, reference.grid, fmri.mask, indexed=False)
    log.info("fmri stats: mask '%s' keeps %d of %d voxels", fmri.mask, int(mask.sum()), mask.size)

    stats: dict[str, np.ndarray] = {
        "subject_ids": np.array(fmri.subject_ids, dtype=np.str_),
        "run_ids": np.array(fmri.run_ids, dtype=np.str_),
        "mask": mask,
        "affine": reference.affine,
        "ddof": np.array(ddof),
        "train_trs": train_rows(split),
        "tr": np.array(fmri.tr),
        "mask_kind": np.array("file" if given else fmri.mask),
        "heldout_policy": np.array(HELDOUT_POLICY),
    }
    for run, crop in crops.items():
        stats[f"run_{run}_crop"] = np.array(crop, dtype=np.int64)
        stats[f"run_{run}_stats_trs"] = train_trs[run] + crop[0]
    if len(crops) == 1:
        stats["crop"] = stats[f"run_{fmri.run_ids[0]}_crop"]
    for (sid, run), trs in censored.items():
        if trs.size:
            stats[censor.stats_key(sid, run)] = trs
    for sid in fmri.subject_ids:
        mean, std = pooled_training_stats([moments[(sid, run)].moments.select(pick) for run in trained_runs], ddof)
        stats[f"subject_{sid}_mean"], stats[f"subject_{sid}_std"] = mean, std
        for run in fmri.run_ids:
            m = moments[(sid, run)]
            own = m.has_training_trs
            stats[f"subject_{sid}_run_{run}_mean"] = m.mean[pick] if own else mean
            stats[f"subject_{sid}_run_{run}_std"] = m.std[pick] if own else std
    return stats, cleaning_report(fmri, moments, pick)


def compute_norm_stats(
    runs: dict[str, nib.Nifti1Image],
    mask_file: dict[str, nib.Nifti1Image],
    confounds: dict[str, pd.DataFrame],
    split: pd.DataFrame,
    fmri: FmriSpec,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Mask and per-run mean/std in one process: :func:`run_statistics` for every run,
    then :func:`combine_statistics` (what the pipeline runs as one node per run plus a
    reduce node). Returns ``(fmri_norm_stats, cleaning report)``."""
    partials = {}
    with progress("fMRI statistics", len(fmri.run_keys), "runs") as advance:
        for name, (sid, run) in partition_names(fmri.run_keys).items():
            partials[name] = run_statistics(runs, mask_file, confounds, split, fmri, sid, run)
            advance()
    return combine_statistics(runs, mask_file, split, fmri, **partials)


# What the npz's ``heldout_policy`` says (and the README).
HELDOUT_POLICY = (
    "each run with training TRs is z-scored, all its TRs, with the mean and std of its own training TRs; a run "
    "without training TRs (split.by: run val/test runs, fmri.heldout runs) with its subject's training stats: "
    "subject_<id>_mean over every training TR of the subject, subject_<id>_std from the within-run variance "
    "pooled over its training runs (between-run differences of the mean excluded)"
)


def cleaning_report(fmri: FmriSpec, moments: dict[RunKey, SubjectMoments], pick) -> dict:
    """What cleaning did: per subject and run with training TRs, the share of the raw
    variance over the mask (summed over voxels, on the training TRs) that it removed, and
    the median share per voxel."""
    report: dict[str, Any] = {
        "clean": fmri.clean.model_dump(mode="json") if fmri.clean else None,
        "runs": [],
    }
    if fmri.clean is None:
        return report
    confound_files = fmri.confound_files
    for (sid, run), m in moments.items():
        if m.raw_var is None:  # held out whole: cleaned when it is normalized, not measured here
            continue
        raw = m.raw_var[pick]
        kept = m.std[pick] ** 2
        share = 1.0 - kept / raw
        entry = {
            "subject": sid, "run": run, "stats_trs": "train",
            "variance_removed": float(1.0 - kept.sum() / raw.sum()),
            "median_voxel_variance_removed": float(np.median(share)),
            "confounds": confound_files.get(run_key(sid, run)),
        }
        report["runs"].append(entry)
        log.info("fmri clean: %s: cleaning removed %.1f%% of the variance (median voxel %.1f%%)",
                 run_label(fmri, sid, run), 100 * entry["variance_removed"],
                 100 * entry["median_voxel_variance_removed"])
    return report


def build_fmri_tensor(runs: dict[str, nib.Nifti1Image], confounds: dict[str, pd.DataFrame],
                      stats: dict[str, np.ndarray], split: pd.DataFrame, fmri: FmriSpec
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Clean and z-score every run with its saved stats, concatenate each subject's runs,
    then average (``cross_subject``, shape (n_trs, n_voxels)) or stack (``per_subject``,
    (n_subjects, n_trs, n_voxels)). float32; ``n_trs`` sums the runs' crops.

    Also returns which subject's volume is uncensored at each row, (n_subjects, n_trs)
    bool (``fmri_train_valid``; all True without a censoring strategy): the average
    covers those subjects only, and training and evaluation use it (see
    :mod:`giblet_kedro.fmri.censor`).
    """
    subjects, columns = subject_sources(runs, confounds, stats, split, fmri)
    log.info("fmri tensor: %s over %d subjects, %d runs, %d TRs, %d voxels", fmri.mode, len(subjects),
             len(subjects[0]), sum(run.n_trs for run in subjects[0]), len(columns))
    tensor, covered = combine_subjects(subjects, columns, fmri.mode, fmri.chunk_trs, fmri.subjects_per_group)
    if not covered.all():
        log.info("fmri tensor: %d (subject, TR) volumes censored; %d TRs censored in every subject", int((~covered).sum()),
                 int((~covered.any(axis=0)).sum()))
    return tensor, covered


def normalized_group(runs: dict[str, nib.Nifti1Image], confounds: dict[str, pd.DataFrame],
                     stats: dict[str, np.ndarray], split: pd.DataFrame, fmri: FmriSpec, subjects: list[str],
                     run: str, **voxels: KeptVoxels) -> tuple[np.ndarray, np.ndarray]:
    """Map: one run of a group of subjects, each cleaned (if the spec cleans) and z-scored
    with its saved stats, over the run's crop, 0 at its censored TRs.

    ``voxels``: partition name (``sub-<id>_run-<run>``) -> the first pass's copy of that
    run's voxels, read instead of the file (``fmri.keep_decompressed``; the same values).

    Returns
    -------
    combined : ``cross_subject``: the group's sum, ``(n_trs_run, n_voxels)`` float32,
        added from zeros in saved order; ``per_subject``: stacked, ``(n_group, n_trs_run,
        n_voxels)``.
    rows : ``(n_group, n_val_test_rows, n_voxels)`` float32, each subject's val and test
        rows of the run (:func:`giblet_kedro.fmri.partials.val_test_rows`): what the
        inter-subject pass reads.
    """
    columns = mask_columns(stats["mask"])
    kept = val_test_rows(split, run)
    start, stop = saved_crops(stats)[run]
    shape = (stop - start, len(columns))
    summed = fmri.mode == "cross_subject"
    combined = np.zeros(shape, dtype=np.float32) if summed else np.empty((len(subjects), *shape), dtype=np.float32)
    rows = np.empty((len(subjects), len(kept), len(columns)), dtype=np.float32)
    normalized = np.empty(shape, dtype=np.float32) if summed else None
    for index, sid in enumerate(subjects):  # one subject's cleaning operator at a time
        source = run_source(runs, confounds, stats, split, fmri, sid, run)
        copy = voxels.get(partition_name(sid, run))
        if copy is not None:
            source = replace(source, header=replace(source.header, kept=copy))
        target = normalized if summed else combined[index]
        normalize_source(source, columns, fmri.chunk_trs, target)
        if copy is not None:
            release_pages(copy.values)
        rows[index] = target[kept]
        if summed:
            combined += target
    return combined, rows


def combine_normalized(stats: dict[str, np.ndarray], fmri: FmriSpec, **partials: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Reduce: the training tensor and its coverage from every group's
    :func:`normalized_group` (``partials``: partition name -> its combined array), equal
    bitwise to :func:`build_fmri_tensor`."""
    groups = by_group(partials, stats, fmri.subjects_per_group)
    tensor, covered = combine_groups(groups, censor.coverage(stats), fmri.mode, fmri.chunk_trs)
    log.info("fmri tensor: %s over %d subjects in %d groups, %d runs, %d TRs, %d voxels", fmri.mode,
             covered.shape[0], len(groups), len(groups[0][1]), covered.shape[1], tensor.shape[-1])
    return tensor, covered


def normalize_heldout(heldout_runs: dict[str, nib.Nifti1Image], heldout_confounds: dict[str, pd.DataFrame],
                      stats: dict[str, np.ndarray], fmri: FmriSpec) -> dict[str, np.ndarray]:
    """Clean (the whole run at once: it is all test) and z-score each held-out run, all
    its TRs, with its subject's *saved training* stats (the mean over its training TRs,
    the std from the within-run variance pooled over its training runs).

    Returns ``{"subject_<id>": (n_trs, n_voxels) float32}``.
    """
    mask = stats["mask"]
    columns = mask_columns(mask)
    out: dict[str, np.ndarray] = {}
    for sid in fmri.heldout:
        header = read_header(heldout_runs[sid], f"held-out run of subject {sid!r}")
        check_tr(header, fmri.tr)
        check_space(f"{header.label}: {header.path}", header.grid, header.affine,
                    "the training runs", mask.shape, stats["affine"])
        label = f"held-out run of subject {sid!r}: fmri.clean.confounds.heldout"
        censored = run_censored(fmri, (0, header.n_trs), heldout_confounds.get(sid))
        if censored.size:
            raise InputDataError(f"{label}: the confound strategy censors volumes {censored[:20].tolist()}; "
                                 "censoring in held-out runs is not supported yet: give the held-out run a table "
                                 "without censoring, or crop those volumes out of its file")
        operator = run_operator(fmri, header.n_trs, (0, header.n_trs), heldout_confounds.get(sid), label)
        normalized = np.empty((header.n_trs, len(columns)), dtype=np.float32)
        source = RunSource(header, (0, header.n_trs), stats[f"subject_{sid}_mean"], stats[f"subject_{sid}_std"],
                           operator)
        normalize_source(source, columns, fmri.chunk_trs, normalized)
        out[f"subject_{sid}"] = normalized
    return out

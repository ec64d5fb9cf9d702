"""The verification report: every check the lab did by eye, as data, and each one able
to fail on the mistake it exists for.

Every expected value is computed independently of the code path it checks: from the
split table and the spec rather than from the dataset that was built from them, with
numpy on the raw caches rather than through the training's loss code, and from what the
ranks actually drew. Each check names the misconfiguration that makes it fail:

============================================  ========================================
check                                         fails on (tested)
============================================  ========================================
samples and batches drawn in epoch 1          the wrong dataset mode (per_subject
                                              samples for a cross_subject spec)
initial loss components                       statistics computed on other TRs, a
                                              modality standardized with another's
loss components balanced                      ``normalize: none`` with raw pixels
loss falls                                    a learning rate that does not train
normalization stats for every subject         a subject of the spec missing, NaN or
                                              zero stds in the saved stats
val loss below the no-information baseline    decoders that learned nothing that
                                              generalizes
the stimulus drives the brain                 a stimulus that does not belong to the
                                              fMRI (another movie, another demo seed)
============================================  ========================================
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from giblet_kedro.evaluation.metrics import pearson_columns  # noqa: E402
from giblet_kedro.evaluation.model import TrainedModel, measured_fmri  # noqa: E402
from giblet_kedro.fmri import censor  # noqa: E402
from giblet_kedro.spec.schema import FmriSpec, VerifySpec  # noqa: E402
from giblet_kedro.training.job import TrainJob, pool_axes  # noqa: E402

INITIAL_TOLERANCE = 0.02  # relative: numpy on the raw caches against the training's own first pass
BALANCE_FACTOR = 10.0  # largest / smallest initial weighted component
SHIFT_ALPHA = 0.05  # the stimulus check's permutation level
CODEBOOK_SIZE = 1024


def _check(name: str, expected: Any, observed: Any, passed: bool | None, reason: str = "") -> dict:
    return {"check": name, "expected": expected, "observed": observed, "pass": bool(passed), "reason": reason}


# ------------------------------------------------------------------ batch arithmetic
def expected_batches_per_epoch(n_samples: int, world_size: int, batch_size: int) -> int:
    """``DistributedSampler(drop_last=False)`` pads every rank to ceil(n / world) samples;
    the loader keeps the last partial batch."""
    return math.ceil(math.ceil(n_samples / world_size) / batch_size)


def loader_batches(n_samples: int, world_size: int, batch_size: int) -> list[np.ndarray]:
    """Dataset indices of every batch of the training's evaluation loaders (the initial
    losses, the validation), all ranks: ``training.ddp.ShardSampler``, rank ``r`` taking
    every ``world``-th index from ``r``, no padding, the last batch of a rank partial."""
    return [rank_indices[start:start + batch_size]
            for rank_indices in (np.arange(rank, n_samples, world_size) for rank in range(world_size))
            for start in range(0, len(rank_indices), batch_size)]


def expected_targets(split: pd.DataFrame, which: str, n_lags: int, window_trs: int,
                     usable: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    """From the split table alone: how many windows make the ``which`` TRs targets, and
    which of those TRs count (their whole context of ``n_lags - 1`` TRs before them lies
    in their run). ``usable``: (n_trs,) bool, False at TRs left out (censored in every
    subject). Windows cut runs of consecutive usable TRs of one run into pieces of
    ``window_trs - n_lags + 1``."""
    per_window = window_trs - n_lags + 1
    labels = split["split"].astype(str).to_numpy()
    runs = split["run"].astype(str).to_numpy()
    usable = np.ones(len(split), bool) if usable is None else np.asarray(usable, dtype=bool)
    wanted = (labels == which) & usable
    windows, counted = 0, np.zeros(len(split), dtype=bool)
    for run in dict.fromkeys(runs):
        index = np.flatnonzero(runs == run)
        position = np.arange(len(index))
        counted[index] = wanted[index] & (position >= n_lags - 1)
        length = 0
        for row in index:  # stretches of consecutive wanted TRs
            if wanted[row]:
                length += 1
            elif length:
                windows, length = windows + math.ceil(length / per_window), 0
        windows += math.ceil(length / per_window) if length else 0
    return windows, counted


def check_samples_drawn(history: dict, split: pd.DataFrame, fmri: FmriSpec, batch_size: int, n_lags: int,
                        window_trs: int, covered: np.ndarray | None = None) -> dict:
    """What the ranks drew in epoch 1 against the split table, the spec's mode and
    subjects, the context and window length, the world size and the batch size.
    ``covered``: (n_subjects, n_trs) bool, False at censored volumes (from the saved
    statistics): a TR censored in every subject is no target, nor in ``per_subject`` a
    subject's censored TR."""
    usable = None if covered is None else covered.any(axis=0)
    windows, counted = expected_targets(split, "train", n_lags, window_trs, usable)
    per_subject = fmri.mode == "per_subject"
    subjects = len(fmri.subject_ids) if per_subject else 1
    if per_subject and covered is not None:
        targets = int((counted[None, :] & covered).sum())
    else:
        targets = int(counted.sum()) * subjects
    world = int(history["world_size"])
    samples = windows * subjects
    expected = {"distinct_samples": targets, "windows_with_padding": math.ceil(samples / world) * world,
                "batches_per_rank": [expected_batches_per_epoch(samples, world, batch_size)] * world}
    drawn = history.get("epoch1_drawn")
    if drawn is None or "windows" not in drawn:
        return _check("samples and batches drawn in epoch 1", expected, None, False,
                      "the training history does not record what epoch 1 drew (trained before this check existed)")
    observed = {"distinct_samples": drawn["distinct_samples"], "windows_with_padding": drawn["windows"],
                "batches_per_rank": list(drawn["batches_per_rank"])}
    left_out = int((split["split"].astype(str) == "train").sum()) - int(counted.sum())
    why = (f"{fmri.mode}: {int(counted.sum())} train TRs with their whole context of {n_lags - 1} TRs in their run "
           f"(split table; {left_out} left out: a run's first TRs, or censored in every subject)"
           + (f" x {subjects} subjects (spec)" if subjects > 1 else "")
           + f"; {samples} windows of {window_trs} TRs, {world} rank(s) of ceil({samples} / {world}), batches of "
           f"{batch_size}")
    return _check("samples and batches drawn in epoch 1", expected, observed, observed == expected, why)


# ------------------------------------------------------------- raw caches, by numpy
class RawSamples:
    """The training samples of a job read straight from the caches with numpy, unscaled:
    dataset index ``i`` is subject ``i // n_rows`` at ``rows[i % n_rows]``."""

    def __init__(self, job: TrainJob, rows: np.ndarray):
        self.job, self.rows = job, np.asarray(rows, dtype=np.int64)
        self.fmri = np.load(job.paths.fmri, mmap_mode="r")
        self.covered = np.load(job.paths.fmri_valid) if job.paths.fmri_valid else None
        self.n_subjects = self.fmri.shape[0] if job.mode == "per_subject" else 1

    def __len__(self) -> int:
        return len(self.rows) * self.n_subjects

    def read(self, name: str, indices: np.ndarray, any_subject: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(raw values (n, *sample) float64 or int, valid (n,)) of dataset ``indices``.
        ``any_subject``: a TR's stimulus is valid when any subject's volume is uncensored
        (the stimulus statistics, over one copy of the stimulus)."""
        subjects, positions = np.divmod(np.asarray(indices), len(self.rows))
        trs = self.rows[positions]
        # Censored volumes: by hand, not through training.job's helper.
        if self.covered is None:
            uncensored = np.ones(len(trs), bool)
        elif self.job.mode == "per_subject" and not any_subject:
            uncensored = self.covered[subjects, trs]
        else:
            uncensored = self.covered[:, trs].any(axis=0)
        if name == "fmri":
            values = self.fmri[subjects, trs] if self.fmri.ndim == 3 else self.fmri[trs]
            return np.asarray(values, dtype=np.float64), uncensored
        values = np.load(self.job.paths.values[name], mmap_mode="r")[trs]
        valid = np.load(self.job.paths.valid[name])[trs] & uncensored
        return (np.asarray(values) if name == "audio" and self.job.shapes.audio_is_codes
                else np.asarray(values, dtype=np.float64)), np.asarray(valid, dtype=bool)


def _feature_moments(samples: RawSamples, name: str, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (ddof 0) over the valid training samples, by plain sums of
    values and squares in float64 (not the training's merged moments)."""
    axes = tuple(a + 1 for a in pool_axes(name))
    total = squares = None
    count = 0
    indices = np.arange(len(samples.rows))  # one copy of the stimulus, or every subject's fMRI
    if name == "fmri":
        indices = np.arange(len(samples))
    for start in range(0, len(indices), block):
        values, valid = samples.read(name, indices[start:start + block], any_subject=name != "fmri")
        values = values[valid]
        part, part_squares = values.sum(axis=(0, *axes)), np.square(values).sum(axis=(0, *axes))
        total = part if total is None else total + part
        squares = part_squares if squares is None else squares + part_squares
        count += values.shape[0] * int(np.prod([values.shape[a] for a in axes], dtype=np.int64))
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return np.expand_dims(mean, tuple(a - 1 for a in axes)), np.expand_dims(std, tuple(a - 1 for a in axes))


def _marginal_entropy(samples: RawSamples, smoothing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Each codebook's training code distribution (np.unique counts) and its entropy (nats)."""
    values, valid = samples.read("audio", np.arange(len(samples.rows)), any_subject=True)
    codes = values[valid]
    marginal = np.zeros((codes.shape[1], CODEBOOK_SIZE))
    for q in range(codes.shape[1]):
        found, counts = np.unique(codes[:, q], return_counts=True)
        marginal[q, found.astype(np.int64)] = counts
    entropy = np.array([-(p[p > 0] / p.sum() * np.log(p[p > 0] / p.sum())).sum() for p in marginal])
    marginal = (marginal + smoothing) / (marginal + smoothing).sum(axis=1, keepdims=True)
    return marginal, entropy


def counted_rows(job: TrainJob, rows: list[int] | np.ndarray) -> np.ndarray:
    """The rows whose whole context lies in their run (those a window's loss counts)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.asarray(job.run_starts, dtype=np.int64)
    run_start = starts[np.searchsorted(starts, rows, side="right") - 1]
    return rows[rows - run_start >= job.n_lags - 1]


def window_batches(job: TrainJob, rows: list[int] | np.ndarray, world: int) -> tuple[RawSamples, list[np.ndarray]]:
    """The samples of ``rows`` that count, and what each batch of the training's
    unshuffled loaders over their windows holds (indices into those samples)."""
    from giblet_kedro.training.data import plan_windows

    rows = np.asarray(rows, dtype=np.int64)
    counted = counted_rows(job, rows)
    samples = RawSamples(job, counted)
    position = {int(row): i for i, row in enumerate(counted)}
    n_rows = samples.fmri.shape[-2]
    windows = plan_windows(rows, np.asarray(job.run_starts), n_rows, job.n_lags, job.window_trs)
    per_window = [np.array([position[r] for r in range(a, b) if r in position], dtype=np.int64) for _, a, b in windows]
    batches = []
    for indices in loader_batches(len(windows) * samples.n_subjects, world, int(job.train["batch_size"])):
        parts = [subject * len(counted) + per_window[w] for subject, w in (divmod(int(i), len(windows))
                                                                          for i in indices)]
        batches.append(np.concatenate(parts) if parts else np.zeros(0, np.int64))
    return samples, batches


def no_information_loss(job: TrainJob, samples: RawSamples, name: str, batches: list[np.ndarray], normalize: str,
                        code_logits: str = "uniform") -> float:
    """The loss, in the spec's ``normalize`` units, of predicting every feature's training
    mean (codes: uniform logits or the training marginal) on ``samples``, in ``batches``
    as the training's unshuffled evaluation loaders hold them, so ``std``'s per-batch
    spread is reproduced too.

    Computed with numpy from the raw caches: the training mean and std of every feature
    from plain sums over the training TRs, never from ``loss_stats``.
    """
    train = RawSamples(job, np.asarray(job.train_rows))  # every training TR, as the loss statistics
    is_codes = name == "audio" and job.shapes.audio_is_codes
    if is_codes:
        marginal, entropy = _marginal_entropy(train, smoothing=1.0)
        informative = entropy > 1e-9
    else:
        mean, std = _feature_moments(train, name)
        informative = std > 0
    total, count = 0.0, 0
    for indices in batches:
        if indices.size == 0:
            continue
        values, valid = samples.read(name, indices)
        if not valid.any():
            continue
        if is_codes:
            if code_logits == "uniform":
                ce = np.full(values.shape[:2], math.log(CODEBOOK_SIZE))
            else:
                q_index = np.arange(values.shape[1])[None, :, None]
                ce = -np.log(marginal[q_index, values.astype(np.int64)]).mean(axis=2)
            per_sample = ce.mean(1) if normalize == "none" else (ce / np.where(informative, entropy, 1.0))[
                :, informative].mean(1)
        elif normalize == "variance":
            z2 = np.square((values - mean) / np.where(informative, std, 1.0))
            per_sample = (z2 * informative).reshape(len(values), -1).sum(1) / informative.sum() / \
                int(np.prod([values.shape[1 + a] for a in pool_axes(name)], dtype=np.int64))
        else:
            per_sample = np.square(values - mean).reshape(len(values), -1).mean(1)
            if normalize == "std":
                per_sample = per_sample / max(float(np.std(values[valid], ddof=1)), 1e-12)
        batch_loss = float(per_sample[valid].mean())
        total += batch_loss * int(valid.sum())  # the training weights a batch by its valid samples
        count += int(valid.sum())
    return total / max(count, 1)


def check_initial_losses(job: TrainJob, history: dict) -> tuple[dict, dict]:
    """The untrained model predicts every feature's training mean (and uniform code
    logits): its first pass must equal that predictor's loss computed with numpy on the
    raw caches, in the spec's units. Returns the check and the expected components."""
    initial = {k: v for k, v in (history.get("initial") or {}).items() if k != "total"}
    if not initial:
        return _check("initial loss components", None, None, False,
                      "no initial evaluation recorded (a resumed run of an older version?)"), {}
    world, normalize = int(history["world_size"]), job.loss["normalize"]
    samples, batches = window_batches(job, job.train_rows, world)
    expected = {name: no_information_loss(job, samples, name, batches, normalize) for name in initial}
    passed = all(abs(initial[n] - expected[n]) <= INITIAL_TOLERANCE * abs(expected[n]) + 1e-6 for n in initial)
    why = (f"normalize: {normalize}; numpy on the raw training TRs: every feature's mean"
           + (", uniform code logits" if "audio" in initial and job.shapes.audio_is_codes else "")
           + f"; tolerance {INITIAL_TOLERANCE:.0%}")
    return _check("initial loss components", {k: round(v, 4) for k, v in expected.items()},
                  {k: round(v, 4) for k, v in initial.items()}, passed, why), expected


def check_balance(job: TrainJob, components: dict[str, float]) -> dict:
    """Weighted initial components within ``BALANCE_FACTOR`` of each other, in the units
    the spec trains with (raw units with ``none`` let 0-255 pixels swamp the rest)."""
    weighted = {n: job.loss["weights"].get(n, 1.0) * v for n, v in components.items()
                if job.loss["weights"].get(n, 1.0) > 0}
    if len(weighted) < 2:
        return _check("loss components balanced", f"largest/smallest <= {BALANCE_FACTOR:g}", None, True,
                      "a single weighted component")
    ratio = max(weighted.values()) / max(min(weighted.values()), 1e-12)
    largest, smallest = max(weighted, key=weighted.get), min(weighted, key=weighted.get)
    return _check("loss components balanced", f"largest/smallest <= {BALANCE_FACTOR:g}", round(ratio, 3),
                  ratio <= BALANCE_FACTOR, f"weighted initial components, normalize: {job.loss['normalize']}; "
                  f"largest {largest} {weighted[largest]:.4g}, smallest {smallest} {weighted[smallest]:.4g}")


def check_loss_drop(history: dict, verify: VerifySpec) -> dict:
    epochs = history["epochs"]
    initial = history.get("initial") or {}
    first = initial.get("total", epochs[0]["train"]["total"] if epochs else float("nan"))
    window = [e["train"]["total"] for e in epochs[: verify.drop_within_epochs]]
    drop = (first - min(window)) / first if window and first else 0.0
    return _check(f"loss falls within {verify.drop_within_epochs} epochs", f">= {verify.min_loss_drop:.0%}",
                  f"{drop:.1%}", drop >= verify.min_loss_drop, f"from {first:.4f} to {min(window or [first]):.4f}")


def selected_epoch(history: dict) -> dict:
    """The epoch record of the weights every consumer loads (the last when none was selected)."""
    chosen = (history.get("selected") or {}).get("epoch")
    return next((e for e in history["epochs"] if e["epoch"] == chosen), history["epochs"][-1])


def check_norm_stats(stats: dict[str, np.ndarray], fmri: FmriSpec) -> dict:
    """For every subject and run **of the spec** (not of the npz's own subject list): the
    pooled and per-run mean and std present, finite, with one value per mask voxel and
    every std > 0."""
    n_voxels = int(np.asarray(stats["mask"]).sum()) if "mask" in stats else None
    problems = {}
    for sid in fmri.subject_ids:
        prefixes = [f"subject_{sid}"] + [f"subject_{sid}_run_{run}" for run in fmri.run_ids]
        for prefix in prefixes:
            for part in ("mean", "std"):
                key = f"{prefix}_{part}"
                values = stats.get(key)
                if values is None:
                    problems.setdefault(sid, []).append(f"{key} missing")
                elif np.shape(values) != (n_voxels,):
                    problems.setdefault(sid, []).append(f"{key} has shape {np.shape(values)}, not ({n_voxels},)")
                elif not np.isfinite(values).all():
                    problems.setdefault(sid, []).append(f"{key} has {int((~np.isfinite(values)).sum())} NaN/inf")
                elif part == "std" and not (values > 0).all():
                    problems.setdefault(sid, []).append(f"{key} has {int((values <= 0).sum())} zero stds")
    complete = [sid for sid in fmri.subject_ids if sid not in problems]
    return _check("normalization stats for every subject of the spec", fmri.subject_ids, complete, not problems,
                  "; ".join(f"{sid}: {', '.join(p)}" for sid, p in problems.items())
                  or f"pooled and per-run mean/std, {n_voxels} finite values each, std > 0")


def check_val_baselines(job: TrainJob, history: dict) -> dict:
    """Each stimulus modality's validation loss after training against the loss of
    predicting the training mean (codes: the add-one smoothed training marginal) on the
    same val TRs, computed with numpy in the same units."""
    if not job.val_rows or not history["epochs"]:
        return _check("val loss below the no-information baseline", None, None, False, "no val TRs")
    final = selected_epoch(history)["val"]
    world, normalize = int(history["world_size"]), job.loss["normalize"]
    samples, batches = window_batches(job, job.val_rows, world)
    baseline = {name: no_information_loss(job, samples, name, batches, normalize, code_logits="marginal")
                for name in job.modalities if name in final}
    failing = [name for name in baseline if not final[name] < baseline[name]]
    return _check("val loss below the no-information baseline", {k: f"< {v:.4f}" for k, v in baseline.items()},
                  {k: round(final[k], 4) for k in baseline}, not failing,
                  (f"not below: {failing}; " if failing else "")
                  + f"the selected epoch's val loss per modality, normalize: {normalize}; baseline: every feature's "
                    "training mean" + (", the add-one smoothed code marginal" if "audio" in baseline and
                                       job.shapes.audio_is_codes else ""))


def shift_test(trained: TrainedModel, rows: np.ndarray, min_shift: int) -> dict[str, Any]:
    """The fMRI prediction's mean voxel r over ``rows`` against the same weights on the
    stimulus circularly shifted in time by every shift of at least ``min_shift`` TRs.

    A model that only reconstructs its inputs, or whose stimulus does not belong to the
    fMRI, predicts the brain no better from the true stimulus than from a shifted one.
    """
    measured = trained.fmri_to_model_units(measured_fmri(trained.job, rows)).mean(0)
    n = len(rows)
    shifts = [k for k in range(min_shift, n - min_shift + 1) if 0 < k < n]

    observed, *null = (float(pearson_columns(prediction, measured).mean())
                       for prediction in trained.shifted_fmri_rows(rows, [0, *shifts]))
    null = np.array(null)
    p = (1 + int((null >= observed).sum())) / (1 + len(shifts))
    return {"mean_r": observed, "shifted_mean_r_max": float(null.max()) if null.size else None,
            "shifted_mean_r_mean": float(null.mean()) if null.size else None, "shifts": len(shifts), "p": p}


def check_stimulus_drives_brain(trained: TrainedModel, min_shift: int) -> dict:
    rows = np.asarray(trained.job.val_rows)
    needed = int(math.ceil(1 / SHIFT_ALPHA)) - 1
    if len(rows) - 2 * min_shift + 1 < needed:
        return _check("the stimulus drives the brain", f"p <= {SHIFT_ALPHA}", None, False,
                      f"{len(rows)} val TRs allow {max(len(rows) - 2 * min_shift + 1, 0)} shifts of at least "
                      f"{min_shift} TRs; the test needs {needed} (more val TRs, or a smaller evaluate.min_shift_trs)")
    result = shift_test(trained, rows, min_shift)
    passed = result["p"] <= SHIFT_ALPHA and result["mean_r"] > 0
    return _check("the stimulus drives the brain", f"mean voxel r on val TRs above every shifted stimulus "
                  f"(p <= {SHIFT_ALPHA})", {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
                  passed, f"the fMRI prediction's mean r against the same weights on the stimulus circularly shifted "
                  f"by each of {result['shifts']} shifts of >= {min_shift} TRs; p = (1 + #shifted >= true) / "
                  f"(1 + shifts)")


def _coverage(norm_stats: dict[str, np.ndarray], split: pd.DataFrame) -> np.ndarray | None:
    """(n_subjects, n_trs) the uncensored volumes, from the statistics' record of censored
    volumes (not from the tensor's coverage file that training read); None: none censored."""
    if not any(str(key).endswith("_censored") for key in norm_stats):
        return None
    return censor.coverage(norm_stats)


def verify(job: TrainJob, history: dict, weights: dict, norm_stats: dict[str, np.ndarray], split: pd.DataFrame,
           fmri: FmriSpec, verify_spec: VerifySpec) -> dict:
    """Run every check; the report (JSON-serialisable)."""
    initial_check, expected_initial = check_initial_losses(job, history)
    components = {k: v for k, v in (history.get("initial") or {}).items() if k != "total"}
    trained = TrainedModel.load(job, weights)
    checks = [
        check_samples_drawn(history, split, fmri, int(job.train["batch_size"]), job.n_lags, job.window_trs,
                            _coverage(norm_stats, split)),
        initial_check,
        check_balance(job, components or expected_initial),
        check_loss_drop(history, verify_spec),
        check_norm_stats(norm_stats, fmri),
        check_val_baselines(job, history),
        check_stimulus_drives_brain(trained, verify_spec.min_shift_trs),
    ]
    return {"experiment": job.experiment, "passed": all(c["pass"] for c in checks), "checks": checks,
            "layout": trained.layout, "normalize": job.loss["normalize"], "feature_weights": job.feature_weights,
            "world_size": history["world_size"], "device": history["device"], "precision": history["precision"],
            "epochs_run": len(history["epochs"]), "resumed_from_epoch": history.get("resumed_from_epoch"),
            "selected": history.get("selected")}


def selected_line(report: dict) -> str:
    """Which epoch's weights every later stage reads, and why."""
    selected = report.get("selected")
    if not selected:
        return f"Weights kept: the last of {report['epochs_run']} epochs (no selection recorded)"
    return f"Weights kept: epoch {selected['epoch']} of {report['epochs_run']}, {selected['reason']}"


def summary(report: dict) -> str:
    lines = [f"# Verification: {report['experiment']}", "",
             f"{'PASS' if report['passed'] else 'FAIL'}: {sum(c['pass'] for c in report['checks'])} of "
             f"{len(report['checks'])} checks; {report['world_size']} {report['device']} rank(s), {report['precision']}; "
             f"model layout {report['layout']}", "", selected_line(report), "",
             *[f"- {name} features: {text}" for name, text in report.get("feature_weights", {}).items()], "",
             "| check | expected | observed | result | why |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c['check']} | {c['expected']} | {c['observed']} | {'pass' if c['pass'] else 'FAIL'} | {c['reason']} |"
              for c in report["checks"]]
    return "\n".join(lines) + "\n"


def loss_curve(history: dict):
    initial = history.get("initial") or {}
    figure, axis = plt.subplots(figsize=(7, 4))
    epochs = [e["epoch"] for e in history["epochs"]]
    for name in history["epochs"][0]["train"] if history["epochs"] else []:
        values = [e["train"][name] for e in history["epochs"]]
        axis.plot([0, *epochs], [initial.get(name, values[0]), *values], label=f"train {name}",
                  linewidth=2 if name == "total" else 1)
    if history["epochs"]:
        axis.plot(epochs, [e["val"]["total"] for e in history["epochs"]], "k--", label="val total")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss (normalized units)")
    axis.set_title("training loss per component")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure

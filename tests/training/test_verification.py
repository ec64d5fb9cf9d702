"""The verification's checks fail on the mistakes they exist for.

A small planted experiment is trained for real (DDP worker, one rank) and verified: every
check passes. Then one thing at a time is misconfigured, and the check that exists for
that mistake fails: the wrong dataset mode, raw pixels with ``normalize: none``, a
subject's stats missing, a stimulus that does not belong to the fMRI. Where the mistake
also spoils learning (raw pixels swamping the fMRI, another movie's brain), the checks of
learning may fail beside it; the checks of the data never do.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter

from giblet_kedro.models.autoencoder import ModalityShapes
from giblet_kedro.models.temporal import hrf_lag_profile
from giblet_kedro.spec.schema import FmriSpec, VerifySpec
from giblet_kedro.training.ddp import launch, load_checkpoint
from giblet_kedro.training.job import ArrayPaths, TrainJob, compute_loss_stats
from giblet_kedro.training.losses import stats_to_arrays
from giblet_kedro.training.verification import (
    check_norm_stats,
    check_samples_drawn,
    loader_batches,
    verify,
)

N_TRS, VOXELS, SUBJECTS = 160, 24, 3
CONTEXT_S, WINDOW = 9.0, 16  # 6 TRs of context at 1.5 s (5 before each target), 11 targets a window
SPLIT = ["train"] * 100 + ["val"] * 40 + ["test"] * 20
CHECKS = ["samples and batches drawn in epoch 1", "initial loss components", "loss components balanced",
          "loss falls within 3 epochs", "normalization stats for every subject of the spec",
          "val loss below the no-information baseline", "the stimulus drives the brain"]


def smooth(rng: np.random.Generator, shape: tuple[int, ...], phi: float = 0.9) -> np.ndarray:
    x = lfilter([1.0], [1.0, -phi], rng.standard_normal(shape), axis=0)
    return (x - x.mean(0)) / x.std(0)


def stimulus(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Text embeddings (n, 16) and video frames (n, 1, 3, 8, 8) in [0, 1], both driven by
    a few slow latent features."""
    rng = np.random.default_rng(seed)
    latent = smooth(rng, (N_TRS, 4))
    text = latent @ rng.standard_normal((4, 16)) + 0.1 * rng.standard_normal((N_TRS, 16))
    pattern = rng.uniform(0, 1, size=(4, 3 * 8 * 8))
    video = 1 / (1 + np.exp(-(latent @ pattern - pattern.sum(0) / 2) / 2))
    return text.astype(np.float32), video.reshape(N_TRS, 1, 3, 8, 8).astype(np.float32)


def experiment(folder: Path, mode: str = "cross_subject", normalize: str = "variance", video_scale: float = 1.0,
               fmri_from: int = 0, stimulus_seed: int = 0, epochs: int = 12, lr: float = 1e-2
               ) -> tuple[TrainJob, dict, pd.DataFrame, FmriSpec]:
    """Cache files, a job, norm stats, a split table and an fMRI spec of the planted
    experiment: every subject's voxels follow the latent features of the stimulus of seed
    ``fmri_from``; the model sees the stimulus of seed ``stimulus_seed``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    seen_text, seen_video = stimulus(stimulus_seed)
    driving_text, _ = stimulus(fmri_from)
    neural = driving_text @ rng.standard_normal((16, VOXELS)) / 4
    shared = lfilter(hrf_lag_profile(1.5, 6), [1.0], neural, axis=0)  # the BOLD lags the stimulus
    subjects = np.stack([shared + 0.7 * smooth(rng, (N_TRS, VOXELS), 0.5) for _ in range(SUBJECTS)])
    subjects = ((subjects - subjects[:, :100].mean(1, keepdims=True)) / subjects[:, :100].std(1, keepdims=True))
    fmri = (subjects if mode == "per_subject" else subjects.mean(0)).astype(np.float32)
    arrays = {"fmri": fmri, "text": seen_text, "video": seen_video * video_scale}
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    np.save(folder / "valid.npy", np.ones(N_TRS, bool))
    features = {name: SimpleNamespace(values=np.load(folder / f"{name}.npy", mmap_mode="r"),
                                      valid=np.ones(N_TRS, bool)) for name in ("video", "text")}
    stats = compute_loss_stats(np.load(folder / "fmri.npy", mmap_mode="r"), np.arange(100), features)
    np.savez(folder / "loss_stats.npz", **stats_to_arrays(stats))
    job = TrainJob(
        paths=ArrayPaths(fmri=str(folder / "fmri.npy"), values={n: str(folder / f"{n}.npy") for n in features},
                         valid={n: str(folder / "valid.npy") for n in features}, loss_stats=str(folder / "loss_stats.npz")),
        train_rows=list(range(100)), val_rows=list(range(100, 140)), test_rows=list(range(140, 160)), mode=mode,
        shapes=ModalityShapes(video=(1, 3, 8, 8), audio=None, audio_is_codes=False, text=(16,), n_voxels=VOXELS),
        model={"bottleneck": "voxels", "rank": 8, "hidden": 32, "dropout": 0.0, "context_s": CONTEXT_S},
        loss={"normalize": normalize, "weights": {"fmri": 1.0, "video": 1.0, "text": 1.0}},
        train={"epochs": epochs, "batch_size": 1, "window_trs": WINDOW, "lr": lr, "weight_decay": 0.0,
               "warmup_epochs": 0, "grad_clip": 1.0, "precision": "fp32", "checkpoint_every": 100,
               "early_stop_patience": None, "devices": 1, "backend": "auto"},
        seed=0, run_dir=str(folder / "run"), experiment="planted", tr=1.5, world_size=1, backend="gloo",
        device_type="cpu")
    mask = np.zeros((VOXELS, 1, 1), bool)
    mask[:, 0, 0] = True
    ids = ["01", "02", "03"]
    norm_stats = {"mask": mask, "subject_ids": np.array(ids)}
    for sid in ids:
        for prefix in (f"subject_{sid}", f"subject_{sid}_run_1"):
            norm_stats |= {f"{prefix}_mean": rng.normal(100, 1, VOXELS), f"{prefix}_std": rng.uniform(1, 2, VOXELS)}
    split = pd.DataFrame({"tr": np.arange(N_TRS), "run": "1", "split": SPLIT})
    spec = FmriSpec(subjects={sid: f"{sid}.nii.gz" for sid in ids}, tr=1.5, mode="cross_subject")
    return job, norm_stats, split, spec


def verified(job: TrainJob, norm_stats: dict, split: pd.DataFrame, spec: FmriSpec) -> dict[str, dict]:
    history = launch(job)
    weights = load_checkpoint(Path(job.run_dir) / "final.pt")
    report = verify(job, history, weights, norm_stats, split, spec, VerifySpec(min_shift_trs=3))
    assert [c["check"] for c in report["checks"]] == CHECKS
    return {c["check"]: c for c in report["checks"]}


def failing(checks: dict[str, dict]) -> list[str]:
    return [name for name, check in checks.items() if not check["pass"]]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verification")
    return folder, verified(*experiment(folder / "right"))


@pytest.mark.trains
def test_a_right_experiment_passes_every_check(baseline):
    _, checks = baseline
    assert failing(checks) == [], {name: checks[name] for name in failing(checks)}


@pytest.mark.trains
def test_the_wrong_dataset_mode_fails_the_sample_count(baseline):
    """Trained on every subject's samples (per_subject) when the spec says cross_subject:
    the lab's 4,730-instead-of-946 mistake, at this size 300 instead of 100."""
    folder, _ = baseline
    job, norm_stats, split, spec = experiment(folder / "mode", mode="per_subject")
    checks = verified(job, norm_stats, split, spec)
    assert failing(checks) == ["samples and batches drawn in epoch 1"]
    check = checks["samples and batches drawn in epoch 1"]
    # 100 train TRs, the first 5 with no whole context: 95 targets, x 3 subjects when per_subject
    assert check["expected"]["distinct_samples"] == 95 and check["observed"]["distinct_samples"] == 285


@pytest.mark.trains
def test_raw_pixels_without_normalization_fail_the_balance(baseline):
    """``normalize: none`` with 0-255 pixels: the balance check fails, measuring the pixel
    variance against the z-scored fMRI. (The swamped fMRI may fail the checks of learning
    too: that is the harm the balance check warns of; the checks of the data hold.)"""
    folder, _ = baseline
    job, norm_stats, split, spec = experiment(folder / "none", normalize="none", video_scale=255.0, epochs=40,
                                              lr=2e-3)
    checks = verified(job, norm_stats, split, spec)
    assert "loss components balanced" in failing(checks), {n: checks[n] for n in failing(checks)}
    assert checks["loss components balanced"]["observed"] > 100  # pixel variance against z-scored fMRI
    for check in ("samples and batches drawn in epoch 1", "initial loss components",
                  "normalization stats for every subject of the spec"):
        assert checks[check]["pass"], checks[check]


@pytest.mark.trains
def test_a_subjects_missing_stats_fail_the_stats_check(baseline):
    folder, _ = baseline
    job, norm_stats, split, spec = experiment(folder / "stats")
    del norm_stats["subject_02_run_1_std"]
    norm_stats["subject_03_mean"][4] = np.nan
    checks = verified(job, norm_stats, split, spec)
    assert failing(checks) == ["normalization stats for every subject of the spec"]
    reason = checks["normalization stats for every subject of the spec"]["reason"]
    assert "02: subject_02_run_1_std missing" in reason and "03: subject_03_mean has 1 NaN/inf" in reason


@pytest.mark.trains
def test_a_stimulus_from_another_movie_fails_the_stimulus_check(baseline):
    """The checks of the data hold; the stimulus check fails, saying why. (A voxel layer
    pulled towards another movie's brain also reconstructs its own stimulus worse on val
    TRs than the training mean: that check may fail too.)"""
    folder, _ = baseline
    job, norm_stats, split, spec = experiment(folder / "movie", fmri_from=1, stimulus_seed=0)
    checks = verified(job, norm_stats, split, spec)
    assert "the stimulus drives the brain" in failing(checks), {n: checks[n] for n in failing(checks)}
    assert "circularly shifted" in checks["the stimulus drives the brain"]["reason"]
    assert set(failing(checks)) <= {"the stimulus drives the brain", "val loss below the no-information baseline"}


# ---------------------------------------------------------------------- unit level
def test_sample_arithmetic_comes_from_the_split_and_the_spec():
    """The lab's sizes: 946 train TRs in one run, 14 TRs of context, windows of 64: 51
    targets a window, 19 windows; the first 13 TRs have no whole context: 933 targets a
    subject. 5 subjects: 95 windows over 4 ranks, padded to 96, 12 batches of 2 a rank."""
    split = pd.DataFrame({"split": ["train"] * 946 + ["val"] * 100, "run": "1"})
    spec = FmriSpec(subjects={f"{i:02d}": "x" for i in range(1, 6)}, tr=1.5, mode="per_subject")
    drawn = {"windows": 96, "distinct_samples": 5 * 933, "batches_per_rank": [12, 12, 12, 12]}
    history = {"world_size": 4, "epoch1_drawn": drawn}
    assert check_samples_drawn(history, split, spec, 2, 14, 64)["pass"]
    cross = spec.model_copy(update={"mode": "cross_subject"})
    assert not check_samples_drawn(history, split, cross, 2, 14, 64)["pass"]
    two_runs = split.assign(run=["1"] * 473 + ["2"] * 573)  # each run's first 13 TRs lack a whole context
    check = check_samples_drawn(history, two_runs, spec, 2, 14, 64)
    assert check["expected"]["distinct_samples"] == 5 * (946 - 2 * 13) and not check["pass"]


def test_loader_batches_are_the_evaluation_loaders_batches_and_count_each_window_once():
    """The verification's model of the training's evaluation loaders: each rank's batches
    of every ``world``-th window, by hand, and the loaders the training builds
    (``ShardSampler``) give the same; over the ranks every window is drawn exactly once
    (a padded ``DistributedSampler`` would repeat the first, and the validation r that
    selects the checkpoint would count it twice)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from giblet_kedro.training.ddp import ShardSampler

    assert [b.tolist() for b in loader_batches(7, 2, 2)] == [[0, 2], [4, 6], [1, 3], [5]]
    for n, world, batch in ((10, 3, 2), (7, 2, 4), (12, 1, 5), (1, 2, 2)):
        data = TensorDataset(torch.arange(n))
        built = [b[0].tolist() for rank in range(world)
                 for b in DataLoader(data, batch_size=batch, sampler=ShardSampler(n, world, rank))]
        assert [b.tolist() for b in loader_batches(n, world, batch)] == built
        assert sorted(i for b in built for i in b) == list(range(n))


def test_stats_are_checked_for_the_specs_subjects_not_the_files_own_list():
    mask = np.ones((3, 1, 1), bool)
    stats = {"mask": mask, "subject_ids": np.array(["01"]), "subject_01_mean": np.zeros(3),
             "subject_01_std": np.ones(3), "subject_01_run_1_mean": np.zeros(3), "subject_01_run_1_std": np.ones(3)}
    spec = FmriSpec(subjects={"01": "a", "02": "b"}, tr=1.5)
    check = check_norm_stats(stats, spec)
    assert not check["pass"] and "02: subject_02_mean missing" in check["reason"]
    assert check_norm_stats(stats, FmriSpec(subjects={"01": "a"}, tr=1.5))["pass"]
    stats["subject_01_std"] = np.array([1.0, 0.0, 1.0])
    assert "1 zero stds" in check_norm_stats(stats, FmriSpec(subjects={"01": "a"}, tr=1.5))["reason"]


def test_replacing_the_job_keeps_its_stats_readable(tmp_path):
    job, *_ = experiment(tmp_path / "x")
    copy = dataclasses.replace(job, run_dir=str(tmp_path / "elsewhere"))
    assert set(copy.stats) == {"fmri", "video", "text"}


@pytest.mark.parametrize("temporal", ["lags", "transformer"])
def test_the_shift_tests_predictions_equal_the_model_on_the_shifted_stimulus(tmp_path, temporal):
    """The stimulus-drives-the-brain check encodes the stimulus once and shifts the
    encoders' outputs; each shift's prediction equals the model run on the stimulus
    itself shifted among the val rows (inputs and validity), for either temporal module."""
    import torch

    from giblet_kedro.evaluation.model import TrainedModel
    from giblet_kedro.models.autoencoder import build_model

    job, _, _, _ = experiment(tmp_path / "x")
    job = dataclasses.replace(job, model={**job.model, "temporal": temporal})
    torch.manual_seed(0)
    model = build_model(job.shapes, job.model, tr=job.tr)
    with torch.no_grad():  # the output layers start at zero: every prediction would be the mean
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    trained = TrainedModel.load(job, model.state_dict())
    rows = np.asarray(job.val_rows)
    shifts = [0, 3, 17]
    fast = list(trained.shifted_fmri_rows(rows, shifts))
    for shift, prediction in zip(shifts, fast, strict=True):
        inputs = trained.sequence_inputs(np.arange(N_TRS))  # one run: the whole sequence
        for key in ("video", "text", "video_valid", "text_valid"):
            inputs[key][rows] = np.roll(inputs[key][rows], shift, axis=0)
        with torch.no_grad():
            by_hand = trained.model.encode({name: torch.from_numpy(inputs[name])[None] for name in ("video", "text")})
        np.testing.assert_allclose(prediction, by_hand[0].numpy()[rows], rtol=1e-4, atol=1e-5)
    assert np.abs(fast[0] - fast[1]).mean() > 1e-3  # the shift moves the prediction

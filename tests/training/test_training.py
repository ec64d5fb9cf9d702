"""Losses, DDP equivalence, batch arithmetic, resume and failure handling."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from giblet_kedro.models.autoencoder import ModalityShapes
from giblet_kedro.training.ddp import TrainingFailed, launch, load_checkpoint
from giblet_kedro.training.job import ArrayPaths, TrainJob
from giblet_kedro.training.losses import (
    ModalityStats,
    code_cross_entropy,
    code_stats,
    continuous_stats,
    modality_losses,
    stats_to_arrays,
    torch_stats,
)
from giblet_kedro.training.verification import expected_batches_per_epoch


# ------------------------------------------------------------------------- losses
def loss_of(name: str, prediction: np.ndarray, raw: np.ndarray, stats: ModalityStats, normalize: str,
            valid: np.ndarray | None = None) -> float:
    """The training's loss for one continuous modality, from raw predictions and targets."""
    valid = np.ones(len(raw), bool) if valid is None else valid
    batch = {name: torch.from_numpy(stats.standardize(raw)), f"{name}_valid": torch.from_numpy(valid)}
    outputs = {name: torch.from_numpy(stats.standardize(prediction))}
    return float(modality_losses(outputs, batch, torch_stats({name: stats}), normalize, False)[name])


PER_FEATURE_CASES = {  # modality -> (sample shape, the axes of a sample that repeat a feature)
    "video": ((3, 3, 6, 8), (0,)),  # frames of a TR: every pixel's (channel, row, column) is a feature
    "audio": ((5, 12), (1,)),  # mel: bands x frames within the TR
    "text": ((16,), ()),
    "fmri": ((30,), ()),
}


@pytest.mark.parametrize("name", list(PER_FEATURE_CASES))
def test_predicting_each_features_training_mean_scores_exactly_1(rng, name):
    """Each feature standardized with its own mean and std: the per-feature-mean predictor
    scores 1 on the training TRs in every continuous modality, however unequal the
    features' means and spreads (one grand mean and std scored 0.58 for video)."""
    shape, pool = PER_FEATURE_CASES[name]
    feature_shape = tuple(1 if axis in pool else size for axis, size in enumerate(shape))
    centres = rng.uniform(0, 200, size=feature_shape) * rng.uniform(0, 1, size=feature_shape) ** 3
    spreads = rng.uniform(0.1, 30.0, size=feature_shape)
    x = (centres + spreads * rng.standard_normal((64, *shape))).astype(np.float32)
    stats = continuous_stats(x, np.arange(64), pool_axes=pool)
    axes = (0, *(a + 1 for a in pool))
    by_hand = x.astype(np.float64).mean(axis=axes, keepdims=True)[0]
    np.testing.assert_allclose(stats.mean, by_hand, rtol=1e-6)
    np.testing.assert_allclose(stats.std, x.astype(np.float64).std(axis=axes, keepdims=True)[0], rtol=1e-6)
    feature_mean = np.broadcast_to(by_hand, x.shape)
    assert loss_of(name, feature_mean, x, stats, "variance") == pytest.approx(1.0, abs=1e-5)
    grand = np.full_like(x, x.mean())  # one grand mean for everything scores worse than 1
    assert loss_of(name, grand, x, stats, "variance") > 1.5


def test_the_variance_loss_is_the_mean_squared_error_over_each_features_variance_by_hand(rng):
    x = rng.normal(3.0, 2.0, size=(50, 7)).astype(np.float32) * np.arange(1, 8)
    prediction = x + rng.normal(0, 0.5, size=x.shape).astype(np.float32)
    stats = continuous_stats(x, np.arange(50))
    by_hand = (((prediction.astype(np.float64) - x) ** 2) / x.astype(np.float64).var(axis=0)).mean()
    assert loss_of("text", prediction, x, stats, "variance") == pytest.approx(by_hand, rel=1e-5)


def test_scaling_a_modality_by_255_changes_nothing(rng):
    x = rng.uniform(0, 1, size=(40, 2, 3, 4, 5)).astype(np.float32)
    prediction = x + rng.normal(0, 0.1, size=x.shape).astype(np.float32)
    losses = []
    for scale in (1.0, 255.0):
        stats = continuous_stats(x * scale, np.arange(40), pool_axes=(0,))
        losses.append(loss_of("video", prediction * scale, x * scale, stats, "variance"))
        raw = loss_of("video", prediction * scale, x * scale, stats, "none")
        assert raw == pytest.approx(((prediction - x) ** 2).mean() * scale**2, rel=1e-4)  # raw units grow
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_std_mode_is_the_labs_formula(rng):
    x = rng.normal(10, 4, size=(30, 5)).astype(np.float32)
    stats = continuous_stats(x, np.arange(30))
    assert loss_of("text", x + 1.0, x, stats, "std") == pytest.approx(1.0 / x.std(ddof=1), rel=1e-4)


def test_constant_features_are_left_out_and_invalid_samples_do_not_count(rng):
    x = rng.standard_normal((20, 4)).astype(np.float32)
    x[:, 2] = 7.0  # constant over the training TRs: no information, no division by zero
    stats = continuous_stats(x, np.arange(20))
    assert stats.std[2] == 0 and stats.informative.tolist() == [True, True, False, True]
    prediction = np.broadcast_to(x.mean(0), x.shape).copy()
    prediction[:, 2] = 1000.0  # a wild guess on the constant feature changes nothing
    assert loss_of("text", prediction, x, stats, "variance") == pytest.approx(1.0, abs=1e-5)
    valid = np.arange(20) < 10
    wrong = prediction.copy()
    wrong[~valid] += 100.0
    assert loss_of("text", wrong, x, stats, "variance", valid) == pytest.approx(
        (((prediction[valid] - x[valid]) ** 2)[:, [0, 1, 3]] / x.var(0)[[0, 1, 3]]).mean(), rel=1e-5)


def test_codes_score_cross_entropy_over_each_codebooks_marginal_entropy(rng):
    codes = np.stack([rng.integers(0, 8, size=(20, 6)), rng.integers(0, 300, size=(20, 6))], axis=1)
    stats = code_stats(codes, np.arange(20))
    entropies = []
    for q in range(2):
        p = np.bincount(codes[:, q].ravel(), minlength=1024) / codes[:, q].size
        p = p[p > 0]
        entropies.append(-(p * np.log(p)).sum())
    np.testing.assert_allclose(stats.entropy, entropies)
    logits = torch.from_numpy(np.log(np.maximum(stats.marginal, 1e-30)).astype(np.float32))[None, :, :, None]
    logits = logits.expand(20, 2, 1024, 6).contiguous()  # every frame predicts its codebook's marginal
    batch = {"audio": torch.from_numpy(codes), "audio_valid": torch.ones(20, dtype=torch.bool)}
    loss = modality_losses({"audio": logits}, batch, torch_stats({"audio": stats}), "variance", True)["audio"]
    assert float(loss) == pytest.approx(1.0, rel=1e-5)  # predicting the marginal scores 1 in every codebook
    uniform = modality_losses({"audio": torch.zeros(20, 2, 1024, 6)}, batch, torch_stats({"audio": stats}),
                              "variance", True)["audio"]
    assert float(uniform) == pytest.approx(np.mean([math.log(1024) / h for h in entropies]), rel=1e-5)


def test_the_code_cross_entropy_and_its_hand_written_gradient_match_torchs(rng):
    """Values and gradients against torch's cross_entropy, in float64, over more samples
    than one piece of the chunked computation (8), with a gradient that differs per code."""
    logits = torch.from_numpy(rng.standard_normal((11, 2, 50, 7))).requires_grad_()
    codes = torch.from_numpy(rng.integers(0, 50, size=(11, 2, 7)))
    reference = torch.nn.functional.cross_entropy(logits.transpose(1, 2), codes, reduction="none")
    mine = code_cross_entropy(logits, codes)
    torch.testing.assert_close(mine, reference)
    weights = torch.from_numpy(rng.standard_normal((11, 2, 7)))
    (got,) = torch.autograd.grad(mine, logits, weights, retain_graph=True)
    (expected,) = torch.autograd.grad(reference, logits, weights)
    torch.testing.assert_close(got, expected)
    with pytest.raises(RuntimeError, match="runs once"):  # its gradient was scaled in place: no silent second pass
        torch.autograd.grad(mine, logits, weights)


# ------------------------------------------------------------------ batch arithmetic
@pytest.mark.parametrize(("n", "world", "batch"), [(160, 1, 16), (161, 2, 16), (946, 8, 2), (7, 3, 4), (4730, 4, 32)])
def test_expected_batches_match_torchs_sampler(n, world, batch):
    data = TensorDataset(torch.zeros(n))
    for rank in range(world):
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, drop_last=False)
        assert len(DataLoader(data, batch_size=batch, sampler=sampler)) == expected_batches_per_epoch(n, world, batch)


# ----------------------------------------------------------------------- DDP runs
def tiny_job(folder, rng, **overrides) -> TrainJob:
    """A 16-TR job with every modality, written under ``folder`` (created)."""
    tmp_path = folder
    tmp_path.mkdir(parents=True, exist_ok=True)
    n, voxels = 16, 12
    arrays = {
        "fmri": rng.standard_normal((n, voxels)).astype(np.float32),
        "video": rng.uniform(0, 1, (n, 1, 3, 8, 8)).astype(np.float32),
        "audio": rng.integers(0, 32, (n, 2, 12)).astype(np.int16),
        "text": rng.standard_normal((n, 16)).astype(np.float32),
    }
    paths = {}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
        np.save(tmp_path / f"{name}_valid.npy", np.ones(n, bool))
        paths[name] = str(tmp_path / f"{name}.npy")
    rows = np.arange(n)
    stats = {"fmri": continuous_stats(arrays["fmri"], rows), "video": continuous_stats(arrays["video"], rows, (0,)),
             "audio": code_stats(arrays["audio"], rows), "text": continuous_stats(arrays["text"], rows)}
    np.savez(tmp_path / "loss_stats.npz", **stats_to_arrays(stats))
    job = TrainJob(
        paths=ArrayPaths(fmri=paths["fmri"], values={k: paths[k] for k in ("video", "audio", "text")},
                         valid={k: str(tmp_path / f"{k}_valid.npy") for k in ("video", "audio", "text")},
                         loss_stats=str(tmp_path / "loss_stats.npz")),
        # windows of 2 TRs, one of context: a window per training TR (row 0 is context only)
        train_rows=list(range(1, 13)), val_rows=list(range(13, 16)), mode="cross_subject",
        shapes=ModalityShapes(video=(1, 3, 8, 8), audio=(2, 12), audio_is_codes=True, text=(16,), n_voxels=voxels),
        model={"bottleneck": "voxels", "rank": 8, "hidden": 16, "dropout": 0.0, "context_s": 3.0},
        loss={"normalize": "variance", "weights": {"fmri": 1.0, "video": 1.0, "audio": 1.0, "text": 1.0}},
        train={"epochs": 1, "batch_size": 12, "window_trs": 2, "lr": 1e-2, "weight_decay": 0.0, "warmup_epochs": 0,
               "grad_clip": None, "precision": "fp32", "checkpoint_every": 1, "early_stop_patience": None,
               "devices": 1, "backend": "auto"},
        seed=0, run_dir=str(tmp_path / "run"), tr=1.5, world_size=1, backend="gloo", device_type="cpu")
    return dataclasses.replace(job, **overrides)


def params(path) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in load_checkpoint(path).items()}


@pytest.mark.trains
@pytest.mark.parametrize("bottleneck", ["voxels", 16])
def test_two_ranks_average_the_gradients_of_one_process_on_the_global_batch(tmp_path, bottleneck):
    """The first step's gradients of a 2-rank run (each rank 6 samples, DDP averaging)
    equal those of one process on the 12 samples, parameter by parameter. Every layer,
    the zero-initialized output layers included, starts from seeded non-zero weights so
    that every gradient is non-zero; a sum where a mean belongs doubles them and fails
    (Adam's first step, about lr * sign(g), would hide it)."""
    probe = {"gradients": True, "nonzero_init": 0.05}
    jobs = [tiny_job(tmp_path / name, np.random.default_rng(0), probe=probe) for name in ("one", "two")]
    jobs = [dataclasses.replace(job, model={**job.model, "bottleneck": bottleneck}) for job in jobs]
    launch(jobs[0])  # 1 rank, batch 12 = the 12 training samples, one step
    launch(dataclasses.replace(jobs[1], world_size=2, train={**jobs[1].train, "batch_size": 6}))
    one, two = params(tmp_path / "one" / "run" / "grad_step1.pt"), params(tmp_path / "two" / "run" / "grad_step1.pt")
    assert one.keys() == two.keys() and len(one) > 10
    for key in one:
        assert np.abs(one[key]).max() > 0, key  # every layer takes part
        np.testing.assert_allclose(two[key], one[key], rtol=2e-4, atol=1e-7, err_msg=key)


@pytest.mark.trains
def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    settings = {"epochs": 4, "batch_size": 4, "dropout": 0.2}
    full = tiny_job(tmp_path / "full", np.random.default_rng(1))
    full = dataclasses.replace(full, train={**full.train, "epochs": 4, "batch_size": 4},
                               model={**full.model, "dropout": settings["dropout"]})
    cut = dataclasses.replace(full, paths=full.paths, run_dir=str(tmp_path / "cut" / "run"))
    history_full = launch(full)
    with pytest.raises(TrainingFailed, match="injected failure in epoch 3"):
        launch(dataclasses.replace(cut, crash_at=[0, 2]))  # dies during epoch 3, after 2 checkpoints
    history_cut = launch(cut)  # same spec again: resumes
    assert history_cut["resumed_from_epoch"] == 2
    a, b = params(tmp_path / "full" / "run" / "final.pt"), params(tmp_path / "cut" / "run" / "final.pt")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [e["train"]["total"] for e in history_full["epochs"]] == [e["train"]["total"] for e in history_cut["epochs"]]


@pytest.mark.trains
@pytest.mark.serial
def test_a_crashing_rank_ends_the_job_promptly(tmp_path, rng):
    job = tiny_job(tmp_path / "c", rng)
    job = dataclasses.replace(job, world_size=2, crash_at=[1, 0], train={**job.train, "batch_size": 2, "epochs": 3})
    started = time.perf_counter()
    with pytest.raises(TrainingFailed, match="rank 1: injected failure"):
        launch(job)
    assert time.perf_counter() - started < 60


@pytest.mark.trains
@pytest.mark.serial
@pytest.mark.parametrize(("kind", "message"), [
    ("kill", r"a training rank exited abnormally: process 1 terminated with signal SIGKILL"),
    ("hang", r"rank 0: no answer from the other ranks within train.collective_timeout_s = 5 s"),
])
def test_a_killed_or_hanging_rank_ends_the_job_within_the_timeout_then_resumes(tmp_path, rng, kind, message):
    job = tiny_job(tmp_path / kind, rng)
    job = dataclasses.replace(job, world_size=2, train={**job.train, "batch_size": 2, "epochs": 3,
                                                         "collective_timeout_s": 5})
    started = time.perf_counter()
    with pytest.raises(TrainingFailed, match=message):
        launch(dataclasses.replace(job, crash_at=[1, 1, kind]))  # in epoch 2, after epoch 1's checkpoint
    assert time.perf_counter() - started < 60
    history = launch(job)  # started again: resumes after the last checkpoint
    assert history["resumed_from_epoch"] == 1 and len(history["epochs"]) == 3


@pytest.mark.trains
def test_what_a_killed_launcher_left_for_the_rendezvous_is_cleared_by_the_next_launch(tmp_path, rng):
    """A launcher killed with -9 leaves its file store behind (in the run folder, so that
    it is not left in /tmp for good); the next launch starts from an empty one."""
    job = tiny_job(tmp_path / "r", rng)
    stale = Path(job.run_dir) / ".rendezvous"
    stale.mkdir(parents=True)
    (stale / "store").write_bytes(b"left by a launcher killed with -9")
    history = launch(job)
    assert len(history["epochs"]) == job.train["epochs"]
    assert not stale.exists()


@pytest.mark.trains
def test_the_checkpoint_kept_is_the_epoch_of_the_best_validation_r(tmp_path, rng):
    """``best.pt`` holds the epoch whose validation fMRI r (mean over voxels) was highest;
    that r, recomputed here with numpy from best.pt's weights on the val rows, is the one
    the history records; ``selected`` names the epoch and why; ``final.pt`` is the last."""
    from giblet_kedro.evaluation.model import TrainedModel
    from giblet_kedro.training.ddp import selected_weights

    job = tiny_job(tmp_path / "d", rng)
    job = dataclasses.replace(job, train={**job.train, "epochs": 4, "batch_size": 4})
    history = launch(job)
    run = tmp_path / "d" / "run"
    best = load_checkpoint(run / "best.pt")
    scores = [e["val_fmri_r"] for e in history["epochs"]]
    assert best["epoch"] == int(np.argmax(scores)) + 1 == history["selected"]["epoch"]
    assert "highest validation fMRI r" in history["selected"]["reason"]
    trained = TrainedModel.load(job, selected_weights(run))
    rows = np.asarray(job.val_rows)
    predicted = trained.predict_fmri_rows(rows)
    measured = trained.fmri_to_model_units(np.load(job.paths.fmri)[rows])
    centred = [a - a.mean(0) for a in (predicted.astype(np.float64), measured.astype(np.float64))]
    r = (centred[0] * centred[1]).sum(0) / np.sqrt((centred[0] ** 2).sum(0) * (centred[1] ** 2).sum(0))
    assert float(np.nan_to_num(r).mean()) == pytest.approx(max(scores), abs=1e-4)
    assert (run / "final.pt").exists() and (run / "last.pt").exists()


def test_per_subject_indexes_subjects_into_one_stimulus_copy(tmp_path, rng):
    from giblet_kedro.training.data import TrDataset

    fmri = rng.standard_normal((3, 10, 5)).astype(np.float32)  # (subjects, TRs, voxels)
    text = rng.standard_normal((10, 4)).astype(np.float32)
    np.save(tmp_path / "fmri.npy", fmri)
    np.save(tmp_path / "text.npy", text)
    np.save(tmp_path / "valid.npy", np.ones(10, bool))
    paths = ArrayPaths(fmri=str(tmp_path / "fmri.npy"), values={"text": str(tmp_path / "text.npy")},
                       valid={"text": str(tmp_path / "valid.npy")})
    stats = {"fmri": ModalityStats(np.zeros(5), np.ones(5)), "text": ModalityStats(np.zeros(4), np.ones(4))}
    dataset = TrDataset(paths, np.array([2, 5, 7]), "per_subject", stats, audio_is_codes=False)
    assert len(dataset) == 9  # 3 subjects x 3 TRs
    item = dataset[4]  # subject 1, second row -> TR 5
    np.testing.assert_array_equal(item["fmri"].numpy(), fmri[1, 5])
    np.testing.assert_array_equal(item["text"].numpy(), text[5])
    assert dataset.arrays["text"].shape == (10, 4)  # the stimulus is read in place, once


def test_windows_cover_each_target_once_within_runs_with_their_context():
    """Two runs (rows 0-9 and 10-19), targets 2-8 and 11-19 (a censored hole at 15):
    stretches of consecutive rows of one run, cut into pieces of at most window - (lags - 1)
    targets, each window reaching back lags - 1 rows, never before its run's first row."""
    from giblet_kedro.training.data import plan_windows

    rows = np.r_[2:9, 11:15, 16:20]
    windows = plan_windows(rows, np.array([0, 10]), 20, n_lags=3, window_trs=5)  # 3 targets a window
    assert windows.tolist() == [[0, 2, 5], [3, 5, 8], [6, 8, 9], [10, 11, 14], [12, 14, 15], [14, 16, 19],
                                [17, 19, 20]]
    targets = np.concatenate([np.arange(a, b) for _, a, b in windows])
    assert sorted(targets.tolist()) == rows.tolist()  # each target once


def test_a_window_reads_the_inputs_of_its_context_and_counts_only_targets_with_a_whole_context(tmp_path, rng):
    """per_subject: a window's inputs are the stimulus of all its rows (by hand), its fMRI
    that of its subject; a target counts only when uncensored and its whole context lies
    in its run (run 1's first lags - 1 rows never count); padding is no TR."""
    from giblet_kedro.training.data import WindowDataset, plan_windows

    fmri = rng.standard_normal((2, 12, 5)).astype(np.float32)
    text = rng.standard_normal((12, 4)).astype(np.float32)
    for name, array in (("fmri", fmri), ("text", text), ("valid", np.ones(12, bool))):
        np.save(tmp_path / f"{name}.npy", array)
    paths = ArrayPaths(fmri=str(tmp_path / "fmri.npy"), values={"text": str(tmp_path / "text.npy")},
                       valid={"text": str(tmp_path / "valid.npy")})
    stats = {"fmri": ModalityStats(np.zeros(5), np.ones(5)), "text": ModalityStats(np.zeros(4), np.ones(4))}
    windows = plan_windows(np.arange(0, 12), np.array([0, 6]), 12, n_lags=3, window_trs=4)
    dataset = WindowDataset(paths, windows, "per_subject", stats, False, np.array([0, 6]), 3, 4)
    assert len(dataset) == 2 * len(windows)
    item = dataset[len(windows) + 1]  # subject 1, the window whose targets are rows 2-3
    assert windows[1].tolist() == [0, 2, 4] and item["row"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(item["input_text"].numpy(), text[0:4])
    np.testing.assert_array_equal(item["fmri"].numpy()[2:], fmri[1, 2:4])
    assert item["fmri_valid"].tolist() == [False, False, True, True] and int(item["subject"]) == 1
    first = dataset[0]  # targets 0-1: padding before row 0, no whole context: nothing counts
    assert first["row"].tolist() == [-1, -1, 0, 1] and first["present"].tolist() == [False, False, True, True]
    assert not first["fmri_valid"].any() and not first["input_text"].numpy()[:2].any()
    run_two = dataset[[i for i, w in enumerate(windows) if w[1] == 6][0]]  # run 2 starts at row 6
    assert run_two["row"].tolist()[:2] == [-1, -1] or run_two["row"].tolist()[0] >= 6
    assert not run_two["fmri_valid"][run_two["row"] < 8].any()  # rows 6-7: context reaches before the run


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.trains
@pytest.mark.serial
def test_torchrun_on_two_local_nodes_matches_the_spawned_run(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    spawned = tiny_job(tmp_path / "spawned", np.random.default_rng(0))
    launch(dataclasses.replace(spawned, world_size=2, train={**spawned.train, "batch_size": 6, "epochs": 2}))
    job = tiny_job(tmp_path / "nodes", np.random.default_rng(0))
    job = dataclasses.replace(job, world_size=2, train={**job.train, "batch_size": 6, "epochs": 2})
    (tmp_path / "nodes" / "run").mkdir()
    job_file = tmp_path / "nodes" / "job.json"
    job_file.write_text(job.to_json())
    torchrun = str(Path(sys.executable).parent / "torchrun")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "giblet-test",
                               "--node-rank", str(rank), "-m", "giblet_kedro.training.ddp", str(job_file)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    for node in nodes:
        output, _ = node.communicate(timeout=300)
        assert node.returncode == 0, output
    history = __import__("json").loads((tmp_path / "nodes" / "run" / "history.json").read_text())
    assert history["world_size"] == 2
    a, b = params(tmp_path / "spawned" / "run" / "final.pt"), params(tmp_path / "nodes" / "run" / "final.pt")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.trains
def test_early_stopping_is_decided_together_by_all_ranks(tmp_path):
    job = tiny_job(tmp_path / "e", np.random.default_rng(0))
    # no learning: the validation fMRI r of epoch 1 is never bettered
    job = dataclasses.replace(job, world_size=2, train={**job.train, "epochs": 6, "batch_size": 2, "lr": 0.0,
                                                       "early_stop_patience": 2})
    started = time.perf_counter()
    history = launch(job)
    assert history["early_stopped_at"] == 3 and len(history["epochs"]) == 3  # both ranks stopped, no hang
    assert time.perf_counter() - started < 120


@pytest.mark.serial
def test_a_rendezvous_that_never_completes_times_out(tmp_path, rng):
    """One of two torchrun nodes never starts: with --rdzv-conf join_timeout the other
    gives up with RendezvousTimeoutError and a non-zero exit, instead of waiting forever."""
    import subprocess
    import sys
    from pathlib import Path

    job = dataclasses.replace(tiny_job(tmp_path, rng), world_size=2)
    (tmp_path / "job.json").write_text(job.to_json())
    torchrun = str(Path(sys.executable).parent / "torchrun")
    started = time.perf_counter()
    result = subprocess.run([torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                             "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "lonely",
                             "--rdzv-conf", "join_timeout=5", "-m", "giblet_kedro.training.ddp",
                             str(tmp_path / "job.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "RendezvousTimeoutError" in result.stdout + result.stderr
    assert time.perf_counter() - started < 60
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.trains
@pytest.mark.serial
def test_a_second_run_of_the_same_training_waits_for_the_first(tmp_path, rng, caplog):
    """The run folder is locked while a run trains: another run of the same experiment
    says for whom it waits, and only starts once the lock is released."""
    import threading

    from giblet_kedro.training.ddp import run_lock

    job = tiny_job(tmp_path, rng)
    Path(job.run_dir).mkdir(parents=True)
    finished = threading.Event()
    with run_lock(Path(job.run_dir)):
        worker = threading.Thread(target=lambda: (launch(job), finished.set()))
        worker.start()
        time.sleep(2.0)
        assert not finished.is_set()  # blocked on the lock
        assert "another run (pid" in caplog.text and "is training this experiment" in caplog.text
    worker.join(timeout=120)
    assert finished.is_set() and (Path(job.run_dir) / "final.pt").exists()


@pytest.mark.trains
@pytest.mark.parametrize("world", [1, 2])
def test_a_stop_requested_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, world):
    """A stop requested after step 2 of epoch 2 (what the sbatch template's USR1 trap
    does) ends the run with Preempted and the position in last.pt; the next run continues
    at step 3 with each rank's RNG state (dropout) and partial sums: the final weights and
    every epoch's losses equal an uninterrupted run's, bitwise."""
    from giblet_kedro.training.ddp import Preempted

    full = tiny_job(tmp_path / "full", np.random.default_rng(1))
    full = dataclasses.replace(full, world_size=world, train={**full.train, "epochs": 3, "batch_size": 2},
                               model={**full.model, "dropout": 0.2})
    cut = dataclasses.replace(full, run_dir=str(tmp_path / "cut" / "run"))
    history_full = launch(full)
    steps = 12 // (2 * world)
    with pytest.raises(Preempted, match=f"after step 2/{steps} of epoch 2"):
        launch(dataclasses.replace(cut, crash_at=[0, 1, "preempt"]))
    assert not (tmp_path / "cut" / "run" / "PREEMPT").exists()
    history_cut = launch(cut)
    assert history_cut["resumed_from_epoch"] == 1 and history_cut["resumed_from_step"] == 2
    a, b = params(tmp_path / "full" / "run" / "final.pt"), params(tmp_path / "cut" / "run" / "final.pt")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [e["train"] for e in history_full["epochs"]] == [e["train"] for e in history_cut["epochs"]]
    assert history_full["epoch1_drawn"] == history_cut["epoch1_drawn"]


@pytest.mark.trains
def test_sigusr1_to_a_rank_requests_the_stop(tmp_path):
    """The signal itself (SLURM's --signal=USR1@T to the job's processes): the rank's
    handler creates the request file, and training stops inside the epoch."""
    import os
    import signal as signals
    import threading

    from giblet_kedro.training.ddp import Preempted

    job = tiny_job(tmp_path / "sig", np.random.default_rng(2))
    job = dataclasses.replace(job, train={**job.train, "epochs": 200, "batch_size": 1})
    run = tmp_path / "sig" / "run"

    def signal_the_rank():
        deadline = time.time() + 60
        while time.time() < deadline and not (run / "last.pt").exists():  # epoch 1 done: the rank is training
            time.sleep(0.05)
        for pid in _child_pids():
            os.kill(pid, signals.SIGUSR1)

    thread = threading.Thread(target=signal_the_rank)
    thread.start()
    with pytest.raises(Preempted, match="training stopped on request"):
        launch(job)
    thread.join()


def _child_pids() -> list[int]:
    import os

    me = str(os.getpid())
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                pids.append(int(entry))
    return pids


@pytest.mark.trains
def test_per_subject_heads_learn_each_subjects_own_response(tmp_path):
    """Two subjects whose responses to the same stimulus have opposite signs: their
    average brain is flat, so it predicts neither, while each subject's head (trained on
    that subject's windows only) predicts its subject. A head fed another subject's
    windows would learn the average and fail."""
    from giblet_kedro.evaluation.metrics import pearson_columns
    from giblet_kedro.evaluation.model import TrainedModel

    rng = np.random.default_rng(0)
    job = tiny_job(tmp_path, rng)
    text = np.load(job.paths.values["text"])
    shared = text @ rng.standard_normal((16, 12)) / 4
    fmri = np.stack([shared, -shared]) + 0.1 * rng.standard_normal((2, *shared.shape))
    np.save(job.paths.fmri, fmri.astype(np.float32))
    stats = stats_to_arrays({**job.stats, "fmri": continuous_stats(fmri.reshape(-1, 12), np.arange(32))})
    np.savez(job.paths.loss_stats, **stats)
    job = dataclasses.replace(job, mode="per_subject", n_subjects=2,
                              model={**job.model, "head_rank": 2, "context_s": 1.5},
                              train={**job.train, "epochs": 60, "batch_size": 8, "window_trs": 1},
                              train_rows=list(range(12)))
    launch(job)
    trained = TrainedModel.load(job, load_checkpoint(tmp_path / "run" / "final.pt"))
    rows = np.arange(12)
    measured = trained.fmri_to_model_units(fmri[:, rows].astype(np.float32))
    heads = trained.subject_fmri_rows(rows)
    average = trained.predict_fmri_rows(rows)
    for subject in range(2):
        own = pearson_columns(heads[subject], measured[subject]).mean()
        flat = pearson_columns(average, measured[subject]).mean()
        assert own > 0.7 and own > flat + 0.5, (subject, own, flat)  # a head fed both subjects: both near 0


def test_each_seed_trains_in_its_own_folder_the_first_in_the_jobs(tmp_path):
    """train.seeds [5, 2]: seed 5 trains in run_dir, seed 2 in run_dir/seed-2, each with
    its own job file; --recompute discards each one's checkpoints first; one seed alone
    leaves the history as it is."""
    from giblet_kedro.training.seeds import train_seeds

    job = TrainJob(paths=ArrayPaths(fmri=""), train_rows=[], val_rows=[], mode="cross_subject",
                   shapes=ModalityShapes(None, None, False, (3,), 4), model={}, loss={},
                   train={"seeds": [5, 2]}, seed=5, run_dir=str(tmp_path / "run"))
    launched = []

    def fake_launch(member: TrainJob) -> dict:
        assert not (Path(member.run_dir) / "last.pt").exists()  # fresh: discarded before the launch
        launched.append((member.seed, member.run_dir, TrainJob.from_json((Path(member.run_dir) / "job.json").read_text()).seed))
        return {"epochs": [{}] * member.seed, "selected": {"epoch": member.seed}}

    (tmp_path / "run" / "seed-2").mkdir(parents=True)
    for folder in (tmp_path / "run", tmp_path / "run" / "seed-2"):
        (folder / "last.pt").write_text("stale")
    history = train_seeds(job, fake_launch, fresh=True)
    assert launched == [(5, str(tmp_path / "run"), 5), (2, str(tmp_path / "run" / "seed-2"), 2)]
    assert history["selected"] == {"epoch": 5}
    assert [(s["seed"], s["selected"]["epoch"], s["epochs_run"]) for s in history["seeds"]] == [(5, 5, 5), (2, 2, 2)]
    alone = train_seeds(dataclasses.replace(job, train={}), fake_launch)
    assert "seeds" not in alone and len(launched) == 3
    # a seed whose run finished is read, not trained again (a later seed's failure must not
    # retrain it); a stop on request pending makes it unfinished
    done = tmp_path / "run" / "seed-2"
    (done / "final.pt").write_text("weights")
    (done / "history.json").write_text('{"epochs": [{}], "selected": {"epoch": 1}}')
    history = train_seeds(job, fake_launch)
    assert [seed for seed, *_ in launched[3:]] == [5]
    assert history["seeds"][1]["selected"] == {"epoch": 1}
    (done / "preempted.json").write_text("{}")
    train_seeds(job, fake_launch)
    assert [seed for seed, *_ in launched[4:]] == [5, 2]


def test_each_seed_gets_its_own_job_file_for_torchrun(tmp_path):
    from giblet_kedro.training.seeds import write_seed_jobs

    job = TrainJob(paths=ArrayPaths(fmri=""), train_rows=[], val_rows=[], mode="cross_subject",
                   shapes=ModalityShapes(None, None, False, (3,), 4), model={}, loss={},
                   train={"seeds": [5, 2]}, seed=5, run_dir=str(tmp_path / "run"))
    paths = write_seed_jobs(job)
    assert paths == [tmp_path / "run" / "job.json", tmp_path / "run" / "seed-2" / "job.json"]
    written = [TrainJob.from_json(path.read_text()) for path in paths]
    assert [(j.seed, j.run_dir) for j in written] == [(5, str(tmp_path / "run")), (2, str(tmp_path / "run" / "seed-2"))]
    assert write_seed_jobs(dataclasses.replace(job, train={})) == [tmp_path / "run" / "job.json"]

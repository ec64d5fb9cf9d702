"""Lesion nodes: decode the stimulus from measured test-TR brain activity, intact and
with each spec region silenced, against random regions of the same size.

Brain activity reaches the bottleneck through :class:`BrainReadout` (fit on training
TRs); the autoencoder's decoders then reconstruct every modality. A lesion's effect on a
modality is the increase of its normalized loss (the training loss's units: 1 = the
training mean, or the code marginal), so modalities are compared in the same units.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from giblet_kedro.evaluation.lesion import BrainReadout, random_regions, region_voxels, silence
from giblet_kedro.evaluation.model import TrainedModel
from giblet_kedro.pipelines.evaluate.nodes import load_trained, measured_fmri
from giblet_kedro.pipelines.train.nodes import split_rows
from giblet_kedro.spec.schema import LesionSpec, LossSpec, ModelSpec, StimulusSpec, TrainSpec
from giblet_kedro.stimulus.aligned import TrAligned

log = logging.getLogger(__name__)
READOUT_ALPHAS = np.logspace(-1, 6, 15)
SHOWN_TRS = 8


def _mean_subjects(fmri_train: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n_rows, V): the measured fMRI of these rows, averaged over subjects in ``per_subject``."""
    return measured_fmri(fmri_train, rows).mean(0)


def fit_readout(trained: TrainedModel, fmri_train: np.ndarray, rows: np.ndarray) -> BrainReadout:
    if trained.job.model["bottleneck"] == "voxels":
        return BrainReadout.identity()
    return BrainReadout.fit(trained.fmri_to_model_units(_mean_subjects(fmri_train, rows)), trained.encode(rows),
                            READOUT_ALPHAS)


def run_lesions(fmri_train: np.ndarray, fmri_split: pd.DataFrame, loss_stats: dict, video: TrAligned,
                audio: TrAligned, text: TrAligned, model_checkpoint: dict, model: ModelSpec, loss: LossSpec,
                train: TrainSpec, experiment: dict[str, Any], run_dir: str, norm_stats: dict[str, np.ndarray],
                region_images: dict[str, nib.Nifti1Image], lesion: LesionSpec | None,
                stimulus: StimulusSpec | None) -> tuple[dict, dict[str, np.ndarray], str, dict[str, np.ndarray]]:
    """Decode the test TRs' stimulus from measured brain activity: intact, with each
    region silenced, and with ``lesion.random_regions`` random regions of each region's
    size silenced.

    Returns the report (JSON), decoded samples for the pictures (npz), the decoded text
    as the nearest annotation (Markdown) and the decoded audio (EnCodec's decoder; the
    true codes too, resynthesized the same way, for comparison).
    """
    if lesion is None:  # in the default pipeline; `kedro run --pipelines=lesion` refuses this before any node
        log.warning("experiment %r has no 'lesion' section: no lesions run", experiment["name"])
        return ({"experiment": experiment["name"], "skipped": "the spec has no 'lesion' section", "regions": {}},
                {}, f"# Decoded text: {experiment['name']}\n\nNo lesion section in the spec.\n", {})
    trained = load_trained(fmri_train, fmri_split, loss_stats, video, audio, text, model_checkpoint, model, loss,
                           train, experiment, run_dir)
    train_rows, test_rows = split_rows(fmri_split, "train"), split_rows(fmri_split, "test")
    readout = fit_readout(trained, fmri_train, train_rows)
    brain = trained.fmri_to_model_units(_mean_subjects(fmri_train, test_rows))
    targets = trained.batch(test_rows)
    rng = np.random.default_rng(lesion.seed)
    mask = np.asarray(norm_stats["mask"], dtype=bool)
    coordinates = np.argwhere(mask)  # C order, as the voxel columns

    def decode(activity: np.ndarray) -> dict[str, np.ndarray]:
        return trained.decode(readout(activity))

    intact = decode(brain)
    intact_loss = trained.normalized_losses(intact, targets)
    from_stimulus = trained.normalized_losses(trained.predict(test_rows), targets)
    report: dict[str, Any] = {
        "experiment": experiment["name"], "method": lesion.method, "test_trs": int(len(test_rows)),
        "readout": {"kind": "identity (bottleneck: voxels)" if readout.coef is None else "ridge, brain -> bottleneck",
                    "alpha": readout.alpha, "fit_trs": int(len(train_rows))},
        "from_stimulus": {"normalized_loss": from_stimulus},
        "intact": {"normalized_loss": intact_loss},
        "regions": {},
    }
    shown = np.linspace(0, len(test_rows) - 1, min(SHOWN_TRS, len(test_rows))).round().astype(int)
    decoded: dict[str, np.ndarray] = {"rows": test_rows[shown]}
    if "video" in trained.modalities:
        decoded["video_true"], decoded["video_intact"] = targets["video"][shown], intact["video"][shown]
    texts = {"intact": intact.get("text")}
    codes = {"true": targets.get("audio"), "intact": _argmax_codes(intact)}
    for name, region in lesion.regions.items():
        label = f"lesion.regions.{name}"
        voxels = region_voxels(region_images[name], region.labels, mask, norm_stats["affine"], label)
        lesioned = decode(silence(brain, voxels, lesion.method, rng))
        increase = _increase(trained.normalized_losses(lesioned, targets), intact_loss)
        randoms = [_increase(trained.normalized_losses(decode(silence(brain, other, lesion.method, rng)), targets),
                           intact_loss)
                   for other in random_regions(coordinates, int(voxels.sum()), lesion.random_regions, rng)]
        report["regions"][name] = _region_entry(int(voxels.sum()), increase, randoms)
        if "video" in lesioned:
            decoded[f"video_lesion_{name}"] = lesioned["video"][shown]
        texts[f"lesion {name}"] = lesioned.get("text")
        codes[f"lesion_{name}"] = _argmax_codes(lesioned)
        log.info("lesion %s (%d voxels): loss increase %s; specific to %s", name, int(voxels.sum()),
                 {k: round(v, 4) for k, v in increase.items()}, report["regions"][name]["most_specific"])
    tr = float(text.meta.get("grid", {}).get("tr", 0.0) or 0.0)
    text_table = _nearest_annotations(texts, targets, trained, test_rows[shown], stimulus, experiment, shown, tr)
    audio_valid = targets.get("audio_valid", np.zeros(0, bool)).astype(bool)
    return report, decoded, text_table, _decoded_audio(codes, audio_valid, trained, stimulus, experiment)


def _argmax_codes(outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    logits = outputs.get("audio")
    return None if logits is None or logits.ndim != 4 else logits.argmax(axis=2)


def _decoded_audio(codes: dict[str, np.ndarray | None], valid: np.ndarray, trained: TrainedModel,
                   stimulus: StimulusSpec | None, experiment: dict[str, Any]) -> dict[str, np.ndarray]:
    """Waveforms of the valid test TRs' codes, in TR order, through EnCodec's decoder
    (rebuilt exactly as the stimulus stage built the encoder). Empty without codes."""
    if stimulus is None or stimulus.audio is None or not trained.job.shapes.audio_is_codes or not valid.any():
        return {}
    from giblet_kedro.stimulus.audio import codec_for, codes_to_audio, decode_soundtrack, to_model_rate

    audio = stimulus.audio
    samples, rate, _ = decode_soundtrack(Path(audio.path))
    codec = codec_for(to_model_rate(samples, rate), audio.bandwidth, audio.weights, int(experiment["seed"]))

    def waveform(per_tr: np.ndarray) -> np.ndarray:  # (n, n_q, T) -> one stretch of frames
        return codes_to_audio(codec, np.concatenate(list(per_tr[valid].astype(np.int64)), axis=1))

    return {name: waveform(value) for name, value in codes.items() if value is not None}


def _increase(lesioned: dict[str, float], intact: dict[str, float]) -> dict[str, float]:
    return {name: lesioned[name] - intact[name] for name in intact}


def _region_entry(size: int, increase: dict[str, float], randoms: list[dict[str, float]]) -> dict[str, Any]:
    """The region's loss increase per modality, against random regions of its size.

    ``specificity[m]``: the increase for ``m`` minus the mean increase of the other
    modalities; ``random_specificity_max[m]``: the largest such value among the random
    regions; ``exceeds_random[m]``: the region beats every random region on it.
    """
    def specificity(values: dict[str, float]) -> dict[str, float]:
        return {m: v - float(np.mean([o for k, o in values.items() if k != m])) if len(values) > 1 else v
                for m, v in values.items()}

    own = specificity(increase)
    random_spec = [specificity(r) for r in randoms]
    random_max = {m: max(r[m] for r in random_spec) for m in own}
    return {
        "voxels": size, "loss_increase": increase, "random_loss_increase": randoms,
        "random_share_at_least": {m: float(np.mean([r[m] >= increase[m] for r in randoms])) for m in increase},
        "specificity": own, "random_specificity_max": random_max,
        "exceeds_random": {m: bool(own[m] > random_max[m]) for m in own},
        "most_specific": max(own, key=own.get),
    }


def _nearest_annotations(texts: dict[str, np.ndarray | None], targets: dict[str, np.ndarray], trained: TrainedModel,
                         rows: np.ndarray, stimulus: StimulusSpec | None, experiment: dict[str, Any],
                         shown: np.ndarray, tr: float) -> str:
    """Decoded text of the shown test TRs as the nearest annotation (cosine between the
    decoded and each annotation's CLIP embedding, centred on the training mean)."""
    header = f"# Decoded text: {experiment['name']}\n\n"
    if texts.get("intact") is None or stimulus is None or stimulus.text is None:
        return header + "No text modality in this experiment.\n"
    from giblet_kedro.stimulus.hrf import hrf_kernel
    from giblet_kedro.stimulus.text import build_clip, embed_texts, read_segments

    spec = stimulus.text
    segments = read_segments(Path(spec.annotations), spec.start, spec.end, spec.columns, spec.run_onsets_s)
    distinct = list(dict.fromkeys(segments["text"].tolist()))
    clip, tokenizer = build_clip(spec.model, spec.weights, int(experiment["seed"]))
    candidates = embed_texts(distinct, clip, tokenizer, 64, "cpu").astype(np.float64)
    # Convolution scales a steady segment's embedding by the kernel's sum.
    gain = 1.0 if stimulus.hrf.kind == "none" or tr <= 0 else float(hrf_kernel(stimulus.hrf.kind, tr).sum())
    stats = trained.stats["text"]
    centre = candidates.mean(0) * gain

    def nearest(standardized: np.ndarray) -> list[str]:
        raw = standardized.astype(np.float64) * stats.std + stats.mean - centre
        cand = candidates * gain - centre
        similarity = (raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)) @ \
            (cand / np.maximum(np.linalg.norm(cand, axis=1, keepdims=True), 1e-12)).T
        return [distinct[i] for i in similarity.argmax(1)]

    columns = {"true (nearest to the feature)": nearest(targets["text"][shown])}
    columns |= {label: nearest(values[shown]) for label, values in texts.items() if values is not None}
    lines = [header, "| TR | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for k, row in enumerate(rows):
        lines.append(f"| {int(row)} | " + " | ".join(values[k] for values in columns.values()) + " |")
    return "\n".join(lines) + "\n"


def plot_lesions(report: dict, decoded: dict[str, np.ndarray], experiment: dict[str, Any]):
    from giblet_kedro.evaluation.figures import frame_grid, lesion_figure, message_figure

    if not report["regions"]:
        return message_figure("no lesion section in the spec"), message_figure("no lesion section in the spec")
    bars = lesion_figure(report, f"{experiment['name']}: lesions ({report['method']}) vs random regions")
    videos = {key.removeprefix("video_").replace("_", " "): value for key, value in decoded.items()
              if key.startswith("video_")}
    if not videos:
        return bars, message_figure("no video modality in this experiment")
    labels = [f"TR {int(r)}" for r in decoded["rows"]]
    return bars, frame_grid(videos, labels, f"{experiment['name']}: frames decoded from brain activity")


"""A small, realistic synthetic experiment with a known ground truth.

A movie of moving shapes with two tones and noise bursts, scene annotations, and
subjects' 4D NIfTI runs (int16 with scale factors, like a scanner's) whose voxels respond
to the stimulus through a *known* linear map of stimulus features, convolved with the
canonical HRF, plus subject-specific baselines and gains and AR(1) noise. Regions are
planted: visual voxels follow video features, auditory voxels audio features, language
voxels the scene annotations, the rest only noise. Later stages must recover this map.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter, gaussian_filter1d
from scipy.stats import gamma

VIDEO_FEATURES = ("disc_x", "square_brightness", "bar_height", "luminance")
AUDIO_FEATURES = ("tone_440hz", "tone_880hz", "noise_burst")
SCENES = (
    "A red ball rolls slowly across an empty grey room.",
    "Sherlock studies a green lamp that flickers on the desk.",
    "A tall blue door opens onto a noisy street.",
    "Two friends argue quietly in a dim kitchen.",
    "Rain falls on the window while music plays.",
    "A detective runs through a crowded station at night.",
)
REGIONS = {1: "visual", 2: "auditory", 3: "language"}
SIGNAL_CHANGE = 0.02  # responses are ~2% of the baseline, as BOLD is


@dataclass(frozen=True)
class Stimulus:
    """Latent stimulus of one run.

    video : (n_frames, 4) in [0, 1], at ``fps``
    audio : (n_frames, 3) in [0, 1], envelopes at ``fps``
    scenes : table with ``start_s``, ``end_s``, ``scene`` (index into SCENES)
    """

    video: np.ndarray
    audio: np.ndarray
    scenes: pd.DataFrame
    fps: int
    duration_s: float


def _smooth_unit(rng: np.random.Generator, n: int, width: float) -> np.ndarray:
    signal = gaussian_filter1d(rng.standard_normal(n), width, mode="wrap")
    signal -= signal.min()
    return signal / max(signal.max(), 1e-12)


def make_stimulus(rng: np.random.Generator, duration_s: float, fps: int) -> Stimulus:
    n_frames = int(round(duration_s * fps))
    video = np.stack([_smooth_unit(rng, n_frames, 4.0 * fps) for _ in VIDEO_FEATURES], axis=1)
    audio = np.stack([_smooth_unit(rng, n_frames, 3.0 * fps) for _ in AUDIO_FEATURES], axis=1)
    audio[:, 2] = (audio[:, 2] > 0.7) * audio[:, 2]  # noise bursts: on/off
    bounds = [0.0]
    while bounds[-1] < duration_s:
        bounds.append(bounds[-1] + float(rng.uniform(6.0, 20.0)))
    bounds[-1] = duration_s
    labels = rng.integers(0, len(SCENES), size=len(bounds) - 1)
    for i in range(1, len(labels)):  # consecutive scenes differ
        while labels[i] == labels[i - 1]:
            labels[i] = rng.integers(0, len(SCENES))
    scenes = pd.DataFrame({"start_s": bounds[:-1], "end_s": bounds[1:], "scene": labels})
    return Stimulus(video=video.astype(np.float32), audio=audio.astype(np.float32),
                    scenes=scenes, fps=fps, duration_s=duration_s)


def render_frames(stimulus: Stimulus, size: tuple[int, int]) -> np.ndarray:
    """(n_frames, height, width, 3) uint8: a red disc moving left-right, a green square
    changing brightness, a blue bar changing height, on a background of varying grey."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((len(stimulus.video), height, width, 3), dtype=np.uint8)
    radius = height / 5
    for index, (disc_x, brightness, bar, luminance) in enumerate(stimulus.video):
        frame = np.full((height, width, 3), 40 + 80 * luminance, dtype=np.float32)
        cx = radius + disc_x * (width - 2 * radius)
        frame[(xx - cx) ** 2 + (yy - height / 3) ** 2 <= radius**2] = (220, 30, 30)
        square = (xx < width // 4) & (yy > height // 2)
        frame[square] = (0, 55 + 200 * brightness, 0)
        bar_top = int(round(height * (1 - bar)))
        frame[bar_top:, width - width // 8:] = (30, 30, 220)
        frames[index] = frame.astype(np.uint8)
    return frames


def render_audio(stimulus: Stimulus, rate: int, rng: np.random.Generator) -> np.ndarray:
    """(n_samples,) float32 mono: two tones and noise bursts following the envelopes."""
    n = int(round(stimulus.duration_s * rate))
    t = np.arange(n) / rate
    frame_t = np.arange(len(stimulus.audio)) / stimulus.fps
    env = [np.interp(t, frame_t, stimulus.audio[:, k]) for k in range(3)]
    wave = (0.25 * env[0] * np.sin(2 * np.pi * 440 * t) + 0.25 * env[1] * np.sin(2 * np.pi * 880 * t)
            + 0.15 * env[2] * rng.standard_normal(n))
    return wave.astype(np.float32)


def per_tr_features(stimulus: Stimulus, tr: float, n_trs: int) -> np.ndarray:
    """(n_trs, 13) features averaged over each TR window [i*tr, (i+1)*tr): 4 video,
    3 audio, then a one-hot of the scene at the window's middle."""
    frame_t = np.arange(len(stimulus.video)) / stimulus.fps
    tr_index = np.minimum((frame_t // tr).astype(int), n_trs - 1)
    counts = np.bincount(tr_index, minlength=n_trs)[:, None]
    continuous = np.concatenate([stimulus.video, stimulus.audio], axis=1)
    sums = np.zeros((n_trs, continuous.shape[1]))
    np.add.at(sums, tr_index, continuous)
    averaged = sums / np.maximum(counts, 1)
    middle = (np.arange(n_trs) + 0.5) * tr
    scene_at = np.searchsorted(stimulus.scenes["end_s"].to_numpy(), middle, side="right")
    scene_at = stimulus.scenes["scene"].to_numpy()[np.minimum(scene_at, len(stimulus.scenes) - 1)]
    one_hot = np.eye(len(SCENES))[scene_at]
    return np.concatenate([averaged, one_hot], axis=1)


def canonical_hrf(tr: float, length_s: float = 32.0) -> np.ndarray:
    """SPM/Glover-style double gamma sampled every ``tr`` seconds, peak ~5 s, unit sum."""
    t = np.arange(0.0, length_s, tr)
    hrf = gamma.pdf(t, 6.0) - gamma.pdf(t, 16.0) / 6.0
    return hrf / hrf.sum()


def convolve_causal(features: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Response at TR i depends on features at TRs <= i only."""
    n = features.shape[0]
    return np.stack([np.convolve(features[:, k], kernel)[:n] for k in range(features.shape[1])], axis=1)


def brain_layout(grid: tuple[int, int, int]) -> np.ndarray:
    """Region labels on the grid: 0 outside the brain, 4 brain but unresponsive,
    1 visual (posterior), 2 auditory (lateral, middle), 3 language (anterior)."""
    nx, ny, nz = grid
    x, y, z = np.meshgrid((np.arange(nx) + 0.5) / nx - 0.5, (np.arange(ny) + 0.5) / ny - 0.5,
                          (np.arange(nz) + 0.5) / nz - 0.5, indexing="ij")
    brain = (x / 0.48) ** 2 + (y / 0.48) ** 2 + (z / 0.46) ** 2 <= 1.0
    labels = np.where(brain, 4, 0).astype(np.int16)
    labels[brain & (y < -0.18)] = 1
    labels[brain & (np.abs(x) > 0.22) & (np.abs(y) <= 0.18)] = 2
    labels[brain & (y > 0.2) & (np.abs(x) <= 0.22)] = 3
    return labels


def ground_truth_map(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(13, n_brain) weights: each planted region reads only its modality's features.

    Brain voxels are in the C order of ``labels[labels > 0]``.
    """
    region = labels[labels > 0]
    blocks = {1: slice(0, 4), 2: slice(4, 7), 3: slice(7, 13)}
    weights = np.zeros((13, region.size))
    for code, rows in blocks.items():
        voxels = np.flatnonzero(region == code)
        weights[rows, voxels] = rng.standard_normal((rows.stop - rows.start, voxels.size))
    return weights


def shared_response(features: np.ndarray, weights: np.ndarray, tr: float) -> np.ndarray:
    """(n_trs, n_brain): HRF-convolved, standardized features through the map; each
    responsive voxel scaled to unit variance."""
    convolved = convolve_causal(features, canonical_hrf(tr))
    convolved = (convolved - convolved.mean(0)) / np.maximum(convolved.std(0), 1e-12)
    response = convolved @ weights
    spread = response.std(0)
    return response / np.where(spread > 0, spread, 1.0)


def subject_run(response: np.ndarray, labels: np.ndarray, subject_rng: np.random.Generator,
                noise: float, affine: np.ndarray, tr: float) -> nib.Nifti1Image:
    """One subject's 4D run in scanner-like units, stored int16 with scale factors.

    Per voxel: ``baseline * (1 + 2% * (gain * response + noise * AR(1)))``; zero
    outside the brain.
    """
    n_trs, n_brain = response.shape
    brain = labels > 0
    smooth = gaussian_filter(subject_rng.standard_normal(labels.shape), 2.0)
    baseline = 800.0 + 150.0 * smooth / max(np.abs(smooth).max(), 1e-12) + subject_rng.uniform(-50, 50)
    gain = subject_rng.uniform(0.7, 1.3) * subject_rng.uniform(0.8, 1.2, size=n_brain)
    innovations = subject_rng.standard_normal((n_trs, n_brain))
    ar = np.empty_like(innovations)
    ar[0] = innovations[0]
    for t in range(1, n_trs):  # AR(1), phi = 0.3, unit variance
        ar[t] = 0.3 * ar[t - 1] + np.sqrt(1 - 0.09) * innovations[t]
    base = baseline[brain]
    series = base * (1.0 + SIGNAL_CHANGE * (gain * response + noise * ar))
    data = np.zeros((*labels.shape, n_trs), dtype=np.float32)
    data[brain] = series.T
    image = nib.Nifti1Image(data, affine)
    image.set_data_dtype(np.int16)  # nibabel picks scl_slope/scl_inter on save
    image.header.set_xyzt_units(xyz="mm", t="sec")
    zooms = image.header.get_zooms()
    image.header.set_zooms((*zooms[:3], tr))
    return image


def demo_affine(grid: tuple[int, int, int], voxel_mm: float) -> np.ndarray:
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -voxel_mm * (np.asarray(grid) - 1) / 2.0
    return affine

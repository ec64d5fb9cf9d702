"""A small synthetic experiment with a known ground truth, made to catch mistakes.

A movie of moving shapes, brief flashes, two tones, noise bursts and clicks, scene
annotations, and subjects' 4D NIfTI runs (int16 with scale factors, like a scanner's).
Voxels respond to the stimulus through a *known* map, in continuous time:

- the stimulus features are defined at the movie's frame rate; **fast** features (flashes
  of 0.5-1 s, clicks of 0.25-0.5 s) make a one-TR timing error visible;
- **nonlinear** features are measured on the rendered movie itself: motion energy (the
  mean absolute change of each pixel from the frame before), local contrast (the spread
  of luminance within 8-pixel patches, averaged) and log loudness (of the soundtrack's RMS
  over each frame); no linear map of pixels or sound reaches them;
- each voxel's neural signal is its weighted sum of features, convolved at the frame rate
  with a gamma-difference HRF of **its own peak**, drawn between 4 and 7 s (Glover's
  shape, written from the published formula, independent of nilearn's code, stretched),
  and sampled at each volume's time, the middle of its TR;
- planted regions are small (about a third of the brain responds): visual voxels read
  video features, auditory voxels audio features, language voxels the scenes; half of the
  visual and auditory voxels read their modality's nonlinear features instead of its
  linear ones; a share of each region has **mixed selectivity** (a second modality at
  half weight);
- each subject adds its **own** stimulus-driven component (own weights), its baselines and
  gains, **spatially smooth** AR(1) noise and slow **drift**; the held-out run has noise of
  its own.

Later stages must recover this map, with the right timing.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter, gaussian_filter1d
from scipy.signal import lfilter
from scipy.stats import gamma

VIDEO_FEATURES = ("disc_x", "square_brightness", "bar_height", "luminance", "flash")
AUDIO_FEATURES = ("tone_440hz", "tone_880hz", "noise_burst", "click")
NONLINEAR_FEATURES = ("motion_energy", "local_contrast", "log_loudness")  # measured on the rendered movie
FAST_FEATURES = ("flash", "click")
SCENES = (
    "A red ball rolls slowly across an empty grey room.",
    "Sherlock studies a green lamp that flickers on the desk.",
    "A tall blue door opens onto a noisy street.",
    "Two friends argue quietly in a dim kitchen.",
    "Rain falls on the window while music plays.",
    "A detective runs through a crowded station at night.",
)
N_LINEAR = len(VIDEO_FEATURES) + len(AUDIO_FEATURES) + len(SCENES)
N_FEATURES = N_LINEAR + len(NONLINEAR_FEATURES)
BLOCKS = {1: slice(0, 5), 2: slice(5, 9), 3: slice(9, 15)}  # region -> its linear features' columns
NONLINEAR_BLOCKS = {1: slice(15, 17), 2: slice(17, 18)}  # region -> its nonlinear features' columns
NONLINEAR_SHARE = 0.5  # of the visual and auditory voxels, those that read the nonlinear features
HRF_PEAKS_S = (4.0, 7.0)  # each responsive voxel's HRF peaks in this range
SECOND = {1: 2, 2: 3, 3: 1}  # the modality a mixed voxel of each region also reads
REGIONS = {1: "visual", 2: "auditory", 3: "language"}
SIGNAL_CHANGE = 0.02  # responses are ~2% of the baseline, as BOLD is
SLICE_TIME_REF = 0.5  # each volume is the BOLD signal at the middle of its TR
MIXED_SHARE = 0.3
OWN_SHARE = 0.4  # amplitude of a subject's own stimulus-driven component
NOISE_AR = 0.5
NOISE_SMOOTH_VOXELS = 1.0
DRIFT = 1.0  # drift amplitude, in units of the noise


def glover(t: np.ndarray) -> np.ndarray:
    """Glover's (1999) canonical HRF, from its published parameters: a gamma of delay 6 s
    and dispersion 0.9 minus 0.35 of one of delay 12 s (the model ``hrf.kind: glover``
    names; written here from the formula, not taken from nilearn)."""
    return gamma.pdf(t, 6.0 / 0.9, scale=0.9) - 0.35 * gamma.pdf(t, 12.0 / 0.9, scale=0.9)


HRF_PEAK_S = float(np.arange(0, 20, 0.001)[np.argmax(glover(np.arange(0, 20, 0.001)))])  # ~5.0 s


def voxel_hrf(peak_s: float, fps: int, length_s: float = 32.0) -> np.ndarray:
    """Glover's HRF stretched in time to peak at ``peak_s``, at the frame rate, unit sum."""
    kernel = glover(np.arange(0.0, length_s, 1.0 / fps) * HRF_PEAK_S / peak_s)
    return kernel / kernel.sum()


@dataclass(frozen=True)
class Stimulus:
    """Latent stimulus of one run.

    video : (n_frames, 5) in [0, 1], at ``fps``; audio : (n_frames, 4) in [0, 1];
    scenes : table with ``start_s``, ``end_s``, ``scene`` (index into SCENES).
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


def _events(rng: np.random.Generator, n_frames: int, fps: int, gap_s: tuple[float, float],
            length_s: tuple[float, float]) -> np.ndarray:
    """(n_frames,) 0/1: brief events, ``gap_s`` apart (uniform), each ``length_s`` long."""
    on = np.zeros(n_frames, dtype=np.float32)
    t = float(rng.uniform(*gap_s))
    while t * fps < n_frames:
        start = int(round(t * fps))
        on[start:start + max(1, int(round(rng.uniform(*length_s) * fps)))] = 1.0
        t += float(rng.uniform(*gap_s))
    return on


def make_stimulus(rng: np.random.Generator, duration_s: float, fps: int) -> Stimulus:
    n_frames = int(round(duration_s * fps))
    video = np.stack([_smooth_unit(rng, n_frames, 4.0 * fps) for _ in VIDEO_FEATURES[:4]]
                     + [_events(rng, n_frames, fps, (3.0, 8.0), (0.5, 1.0))], axis=1)
    audio = np.stack([_smooth_unit(rng, n_frames, 3.0 * fps) for _ in AUDIO_FEATURES[:3]]
                     + [_events(rng, n_frames, fps, (2.0, 6.0), (0.25, 0.5))], axis=1)
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
    changing brightness, a blue bar changing height, on a background of varying grey;
    a flash washes the whole frame towards white."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((len(stimulus.video), height, width, 3), dtype=np.uint8)
    radius = height / 5
    for index, (disc_x, brightness, bar, luminance, flash) in enumerate(stimulus.video):
        frame = np.full((height, width, 3), 40 + 80 * luminance, dtype=np.float32)
        cx = radius + disc_x * (width - 2 * radius)
        frame[(xx - cx) ** 2 + (yy - height / 3) ** 2 <= radius**2] = (220, 30, 30)
        square = (xx < width // 4) & (yy > height // 2)
        frame[square] = (0, 55 + 200 * brightness, 0)
        bar_top = int(round(height * (1 - bar)))
        frame[bar_top:, width - width // 8:] = (30, 30, 220)
        frame = frame * (1 - 0.8 * flash) + 255 * 0.8 * flash
        frames[index] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def render_audio(stimulus: Stimulus, rate: int, rng: np.random.Generator) -> np.ndarray:
    """(n_samples,) float32 mono: two tones, noise bursts and clicks (a 1,760 Hz beep)
    following the envelopes."""
    n = int(round(stimulus.duration_s * rate))
    t = np.arange(n) / rate
    frame_t = np.arange(len(stimulus.audio)) / stimulus.fps
    env = [np.interp(t, frame_t, stimulus.audio[:, k]) for k in range(3)]
    click = stimulus.audio[np.minimum((t * stimulus.fps).astype(int), len(stimulus.audio) - 1), 3]
    wave = (0.25 * env[0] * np.sin(2 * np.pi * 440 * t) + 0.25 * env[1] * np.sin(2 * np.pi * 880 * t)
            + 0.15 * env[2] * rng.standard_normal(n) + 0.3 * click * np.sin(2 * np.pi * 1760 * t))
    return wave.astype(np.float32)


def nonlinear_features(frames: np.ndarray, audio: np.ndarray, rate: int) -> np.ndarray:
    """(n_frames, 3) measured on the rendered movie, each standardized: motion energy (mean
    |luminance change| from the frame before), local contrast (the mean over 8-pixel
    patches of their luminance's std) and log loudness (log RMS of the sound over each
    frame's span).

    frames : (n_frames, height, width, 3) uint8; audio : (n_samples,) at ``rate`` Hz.
    """
    luminance = frames.astype(np.float32).mean(axis=3) / 255.0
    motion = np.r_[0.0, np.abs(np.diff(luminance, axis=0)).mean(axis=(1, 2))]
    h, w = (luminance.shape[1] // 8) * 8, (luminance.shape[2] // 8) * 8
    patches = luminance[:, :h, :w].reshape(len(luminance), h // 8, 8, w // 8, 8)
    contrast = patches.std(axis=(2, 4)).mean(axis=(1, 2))
    per_frame = len(audio) // len(frames)
    power = np.square(audio[:per_frame * len(frames)].astype(np.float64)).reshape(len(frames), per_frame).mean(1)
    loudness = np.log(power + 1e-6)
    out = np.stack([motion, contrast, loudness], axis=1)
    return (out - out.mean(0)) / np.maximum(out.std(0), 1e-12)


def frame_features(stimulus: Stimulus, nonlinear: np.ndarray | None = None) -> np.ndarray:
    """(n_frames, 15 or 18) every feature at the frame rate: 5 video, 4 audio, a one-hot of
    the scene on screen, then (when given, from :func:`nonlinear_features`) the 3 measured
    on the rendered movie."""
    frame_t = np.arange(len(stimulus.video)) / stimulus.fps
    scene_at = np.searchsorted(stimulus.scenes["end_s"].to_numpy(), frame_t, side="right")
    scene_at = stimulus.scenes["scene"].to_numpy()[np.minimum(scene_at, len(stimulus.scenes) - 1)]
    parts = [stimulus.video, stimulus.audio, np.eye(len(SCENES))[scene_at]]
    return np.concatenate(parts if nonlinear is None else [*parts, nonlinear], axis=1)


def per_tr_features(stimulus: Stimulus, tr: float, n_trs: int) -> np.ndarray:
    """(n_trs, 15) each feature averaged over each TR window [i*tr, (i+1)*tr)."""
    frames = frame_features(stimulus)
    frame_t = np.arange(len(frames)) / stimulus.fps
    tr_index = np.minimum((frame_t // tr).astype(int), n_trs - 1)
    sums = np.zeros((n_trs, frames.shape[1]))
    np.add.at(sums, tr_index, frames)
    return sums / np.maximum(np.bincount(tr_index, minlength=n_trs), 1)[:, None]


def planted_hrf(fps: int, length_s: float = 32.0) -> np.ndarray:
    """Glover's HRF at the frame rate, unit sum (peak ~5 s)."""
    kernel = glover(np.arange(0.0, length_s, 1.0 / fps))
    return kernel / kernel.sum()


def bold(frames: np.ndarray, weights: np.ndarray, fps: int, tr: float, n_trs: int,
         peaks_s: np.ndarray | None = None) -> np.ndarray:
    """(n_trs, n_voxels): the neural signal ``standardized frame features @ weights``,
    convolved at the frame rate (causal) with each voxel's HRF (peaking at ``peaks_s``
    (n_voxels,) s; Glover's, ~5 s, when None), sampled at each volume's time
    ``(j + 0.5) tr``."""
    standardized = (frames - frames.mean(0)) / np.maximum(frames.std(0), 1e-12)
    neural = standardized @ weights
    if peaks_s is None:
        signal = lfilter(planted_hrf(fps), [1.0], neural, axis=0)
    else:
        signal = np.empty_like(neural)
        for peak in np.unique(peaks_s):  # one filter per distinct peak
            columns = peaks_s == peak
            signal[:, columns] = lfilter(voxel_hrf(float(peak), fps), [1.0], neural[:, columns], axis=0)
    at = np.minimum(np.round((np.arange(n_trs) + SLICE_TIME_REF) * tr * fps).astype(int), len(signal) - 1)
    return signal[at]


def hrf_peaks(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n_brain,) each brain voxel's HRF peak (s): uniform in :data:`HRF_PEAKS_S` for the
    responsive voxels, in steps of 0.25 s; Glover's for the rest (which respond to nothing)."""
    region = labels[labels > 0]
    steps = np.arange(HRF_PEAKS_S[0], HRF_PEAKS_S[1] + 1e-9, 0.25)
    return np.where(region < 4, rng.choice(steps, size=region.size), HRF_PEAK_S)


def unit_variance(response: np.ndarray) -> np.ndarray:
    spread = response.std(0)
    return response / np.where(spread > 0, spread, 1.0)


def brain_layout(grid: tuple[int, int, int]) -> np.ndarray:
    """Region labels on the grid: 0 outside the brain, 4 brain but unresponsive,
    1 visual (posterior), 2 auditory (lateral, middle), 3 language (anterior)."""
    nx, ny, nz = grid
    x, y, z = np.meshgrid((np.arange(nx) + 0.5) / nx - 0.5, (np.arange(ny) + 0.5) / ny - 0.5,
                          (np.arange(nz) + 0.5) / nz - 0.5, indexing="ij")
    brain = (x / 0.48) ** 2 + (y / 0.48) ** 2 + (z / 0.46) ** 2 <= 1.0
    labels = np.where(brain, 4, 0).astype(np.int16)
    labels[brain & (y < -0.26)] = 1
    labels[brain & (np.abs(x) > 0.28) & (np.abs(y) <= 0.14)] = 2
    labels[brain & (y > 0.27) & (np.abs(x) <= 0.2)] = 3
    return labels


def ground_truth_map(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(18, n_brain) weights, (n_brain,) mixed-selectivity flags and (n_brain,) nonlinear
    flags: each planted region reads its modality's features, half the visual and auditory
    voxels its nonlinear features instead of the linear ones; a share of each region also
    reads a second modality's linear features at half weight. Brain voxels are in the C
    order of ``labels[labels > 0]``."""
    region = labels[labels > 0]
    weights = np.zeros((N_FEATURES, region.size))
    mixed = np.zeros(region.size, dtype=bool)
    nonlinear = np.zeros(region.size, dtype=bool)
    for code, rows in BLOCKS.items():
        voxels = np.flatnonzero(region == code)
        if code in NONLINEAR_BLOCKS:
            nonlinear[voxels[rng.random(voxels.size) < NONLINEAR_SHARE]] = True
        linear = voxels[~nonlinear[voxels]]
        weights[rows, linear] = rng.standard_normal((rows.stop - rows.start, linear.size))
        if code in NONLINEAR_BLOCKS:
            block, readers = NONLINEAR_BLOCKS[code], voxels[nonlinear[voxels]]
            weights[block, readers] = rng.standard_normal((block.stop - block.start, readers.size))
            weights[block, readers] += np.sign(weights[block, readers])  # a clear drive, of either sign
        also = voxels[rng.random(voxels.size) < MIXED_SHARE]
        second = BLOCKS[SECOND[code]]
        weights[second, also] = 0.5 * rng.standard_normal((second.stop - second.start, also.size))
        mixed[also] = True
    return weights, mixed, nonlinear


def subject_weights(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A subject's own weights: random values on the same features its voxels read."""
    return np.where(weights != 0, rng.standard_normal(weights.shape), 0.0)


def smooth_noise(labels: np.ndarray, n_trs: int, rng: np.random.Generator) -> np.ndarray:
    """(n_trs, n_brain) unit-variance noise, spatially smooth (Gaussian, 1 voxel) and AR(1)
    in time (phi 0.5)."""
    brain = labels > 0
    fields = np.stack([gaussian_filter(rng.standard_normal(labels.shape), NOISE_SMOOTH_VOXELS)[brain]
                       for _ in range(n_trs)])
    fields /= fields.std(0, keepdims=True)
    return lfilter([np.sqrt(1 - NOISE_AR**2)], [1.0, -NOISE_AR], fields, axis=0)


def drift(n_trs: int, n_brain: int, rng: np.random.Generator) -> np.ndarray:
    """(n_trs, n_brain) slow drift: a linear trend and a half cosine over the run, random
    per voxel, about unit variance."""
    t = np.linspace(-1.0, 1.0, n_trs)[:, None]
    return (rng.normal(0, 1.0, n_brain) * t + rng.normal(0, 0.7, n_brain) * np.cos(np.pi * (t + 1) / 2)) * DRIFT


def subject_run(shared: np.ndarray, own: np.ndarray, labels: np.ndarray, subject_rng: np.random.Generator,
                noise_rng: np.random.Generator, noise: float, affine: np.ndarray, tr: float) -> nib.Nifti1Image:
    """One subject's 4D run in scanner-like units, stored int16 with scale factors.

    Per voxel: ``baseline * (1 + 2% * (gain * (shared + own) + noise * (smooth AR(1) +
    drift)))``; zero outside the brain. ``subject_rng`` draws what belongs to the subject
    (baselines, gains), ``noise_rng`` what belongs to the run (noise, drift).
    """
    n_trs, n_brain = shared.shape
    brain = labels > 0
    smooth = gaussian_filter(subject_rng.standard_normal(labels.shape), 2.0)
    baseline = 800.0 + 150.0 * smooth / max(np.abs(smooth).max(), 1e-12) + subject_rng.uniform(-50, 50)
    gain = subject_rng.uniform(0.7, 1.3) * subject_rng.uniform(0.8, 1.2, size=n_brain)
    disturbance = smooth_noise(labels, n_trs, noise_rng) + drift(n_trs, n_brain, noise_rng)
    series = baseline[brain] * (1.0 + SIGNAL_CHANGE * (gain * (shared + own) + noise * disturbance))
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

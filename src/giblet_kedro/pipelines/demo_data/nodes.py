"""The demo-data node: the whole synthetic experiment from the spec's ``demo`` section."""

from __future__ import annotations

import logging
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from giblet_kedro.datasets.movie import Movie
from giblet_kedro.demo.generate import (
    AUDIO_FEATURES,
    FAST_FEATURES,
    HRF_PEAK_S,
    NONLINEAR_FEATURES,
    OWN_SHARE,
    REGIONS,
    SCENES,
    SLICE_TIME_REF,
    VIDEO_FEATURES,
    bold,
    brain_layout,
    demo_affine,
    frame_features,
    ground_truth_map,
    hrf_peaks,
    make_stimulus,
    nonlinear_features,
    per_tr_features,
    render_audio,
    render_frames,
    subject_run,
    subject_weights,
    unit_variance,
)
from giblet_kedro.errors import SpecError
from giblet_kedro.spec.schema import DemoSpec, FmriSpec, run_key, run_onsets

log = logging.getLogger(__name__)


def generate_demo(
    demo: DemoSpec | None, fmri: FmriSpec, experiment: dict[str, Any]
) -> tuple[dict[str, nib.Nifti1Image], dict[str, nib.Nifti1Image], Movie, pd.DataFrame, dict[str, np.ndarray],
           nib.Nifti1Image, Movie, pd.DataFrame]:
    """Generate the movie, annotations, subjects' runs (and held-out runs) and the truth.

    Returns ``(runs, heldout_runs, movie, annotations, ground_truth, regions,
    heldout_movie, heldout_annotations)``; ``regions`` is the planted layout as a NIfTI
    atlas (1 visual, 2 auditory, 3 language, 4 unresponsive brain), for lesion specs.
    Annotations use the Sherlock table's column names. Held-out runs are new runs of the
    same subjects watching a fresh movie, written too (a movie the model never saw, for
    ``predict``); its features and planted response are in the ground truth.
    """
    if demo is None:
        raise SpecError(
            f"experiment {experiment['name']!r} ({experiment['spec_file']}) has no 'demo' section, "
            "so there is no demo data to generate; its fMRI files must already exist"
        )
    rng = np.random.default_rng(demo.seed)
    duration = demo.n_trs * demo.tr
    log.info("demo: %d subjects, %d TRs of %g s, grid %s", len(fmri.subject_ids), demo.n_trs, demo.tr, demo.grid)

    stimulus = make_stimulus(rng, duration, demo.fps)
    movie = Movie(frames=render_frames(stimulus, demo.frame_size), fps=demo.fps,
                  audio=render_audio(stimulus, demo.audio_rate, rng), sample_rate=demo.audio_rate)
    annotations = scene_table(stimulus.scenes)

    labels = brain_layout(demo.grid)
    weights, mixed, nonlinear = ground_truth_map(labels, rng)
    peaks = hrf_peaks(labels, rng)
    frames = frame_features(stimulus, nonlinear_features(movie.frames, movie.audio, demo.audio_rate))
    features = per_tr_features(stimulus, demo.tr, demo.n_trs)
    response = unit_variance(bold(frames, weights, demo.fps, demo.tr, demo.n_trs, peaks))
    affine = demo_affine(demo.grid, demo.voxel_size_mm)

    heldout_n = max(demo.n_trs // 2, 20)
    heldout_stimulus = make_stimulus(rng, heldout_n * demo.tr, demo.fps)
    # Its own generator for the sound: the training data above do not change with it.
    heldout_movie = Movie(frames=render_frames(heldout_stimulus, demo.frame_size), fps=demo.fps,
                          audio=render_audio(heldout_stimulus, demo.audio_rate, np.random.default_rng([demo.seed, 4])),
                          sample_rate=demo.audio_rate)
    heldout_frames = frame_features(heldout_stimulus, nonlinear_features(heldout_movie.frames, heldout_movie.audio,
                                                                         demo.audio_rate))
    heldout_features = per_tr_features(heldout_stimulus, demo.tr, heldout_n)
    heldout_response = unit_variance(bold(heldout_frames, weights, demo.fps, demo.tr, heldout_n, peaks))

    parts = demo_run_parts(fmri, demo)
    runs, heldout = {}, {}
    for index, sid in enumerate(fmri.subject_ids):
        # A subject's baselines, gains and own weights come from its own seed, so its runs
        # share them; the noise and drift of every run (held-out too) from a seed of that run.
        own_weights = subject_weights(weights, np.random.default_rng([demo.seed, index, 1]))
        own = OWN_SHARE * unit_variance(bold(frames, own_weights, demo.fps, demo.tr, demo.n_trs, peaks))
        for run_index, (run, rows) in enumerate(parts.items()):
            runs[run_key(sid, run)] = subject_run(
                response[rows], own[rows], labels, np.random.default_rng([demo.seed, index]),
                np.random.default_rng([demo.seed, index, 2, run_index]), demo.noise, affine, demo.tr)
        if sid in fmri.heldout:
            own_heldout = OWN_SHARE * unit_variance(bold(heldout_frames, own_weights, demo.fps, demo.tr, heldout_n,
                                                         peaks))
            heldout[sid] = subject_run(heldout_response, own_heldout, labels, np.random.default_rng([demo.seed, index]),
                                       np.random.default_rng([demo.seed, index, 3]), demo.noise, affine, demo.tr)

    names = [*VIDEO_FEATURES, *AUDIO_FEATURES]
    truth = {
        "run_ids": np.array(list(parts), dtype=np.str_),
        "run_first_trs": np.array([rows.start for rows in parts.values()], dtype=np.int64),
        "region_labels": labels,
        "region_names": np.array([f"{code}:{name}" for code, name in REGIONS.items()]),
        "weights": weights,
        "mixed_selectivity": mixed,
        "nonlinear": nonlinear,  # the voxels that read the nonlinear features
        "hrf_peaks_s": peaks.astype(np.float32),  # each brain voxel's HRF peak
        "feature_names": np.array([*VIDEO_FEATURES, *AUDIO_FEATURES, *(f"scene_{i}" for i in range(len(SCENES))),
                                   *NONLINEAR_FEATURES]),
        "fast_features": np.array(FAST_FEATURES),
        "features_tr": features,
        "shared_response": response.astype(np.float32),
        "heldout_features_tr": heldout_features,
        "heldout_shared_response": heldout_response.astype(np.float32),
        "hrf_peak_s": np.array(HRF_PEAK_S),  # Glover's (the fast-feature probes below)
        # the planted response of a voxel that would read one fast feature only, through
        # Glover's HRF: a timing probe
        "fast_responses": np.stack([unit_variance(bold(frames, np.eye(frames.shape[1])[:, [names.index(f)]],
                                                      demo.fps, demo.tr, demo.n_trs))[:, 0] for f in FAST_FEATURES],
                                   axis=1).astype(np.float32),
        "slice_time_ref": np.array(SLICE_TIME_REF),
        "affine": affine,
        "noise": np.array(demo.noise),
    }
    regions = nib.Nifti1Image(labels.astype(np.int16), affine)
    regions.header.set_xyzt_units(xyz="mm")
    return (runs, heldout, movie, annotations, truth, regions, heldout_movie,
            scene_table(heldout_stimulus.scenes))


def scene_table(scenes) -> pd.DataFrame:
    """A stimulus's scenes as the Sherlock annotation table's columns."""
    return pd.DataFrame({
        "Start Time (s)": scenes["start_s"].round(2),
        "End Time (s)": scenes["end_s"].round(2),
        "Scene Details - A Level": [SCENES[i] for i in scenes["scene"]],
    })


def demo_run_parts(fmri: FmriSpec, demo: DemoSpec) -> dict[str, slice]:
    """Run id -> the movie TRs it covers: the demo movie cut into equal consecutive runs.

    With several runs, the spec's onsets must say where each begins (run ``k`` at
    ``k * (n_trs // n_runs) * tr`` seconds); a mismatch is an error listing the onsets
    that would be accepted.
    """
    run_ids = fmri.run_ids
    length = demo.n_trs // len(run_ids)
    parts = {run: slice(k * length, (k + 1) * length) for k, run in enumerate(run_ids)}
    if len(run_ids) > 1:
        expected = {run: rows.start * demo.tr for run, rows in parts.items()}
        given = run_onsets(fmri, None)
        if any(abs(given[run] - expected[run]) > 1e-6 for run in run_ids):
            raise SpecError(
                f"the demo cuts its {demo.n_trs}-TR movie into {len(run_ids)} runs of {length} TRs, so "
                f"fmri.runs onsets must be {expected} (seconds); the spec gives {given}"
            )
    return parts

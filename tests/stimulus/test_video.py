"""Video on the TR grid: frames picked by timestamp, never stretched."""

from __future__ import annotations

import numpy as np
import pytest

from giblet_kedro.errors import InputDataError
from giblet_kedro.stimulus.aligned import TrGrid
from giblet_kedro.stimulus.video import extract_frames, sample_times
from tests.stimulus.conftest import level, write_movie


def test_sample_times_are_sub_window_centres():
    grid = TrGrid.single(tr=1.5, start=2, stop=4, onset_s=0.5)
    np.testing.assert_allclose(sample_times(grid, 3), [[3.75, 4.25, 4.75], [5.25, 5.75, 6.25]])


def expected_index(times: np.ndarray, t: float) -> int:
    """The frame on screen at ``t``: the last one shown at or before it."""
    return int(np.searchsorted(times, t, side="right") - 1)


@pytest.mark.parametrize("variable", [False, True])
def test_each_sample_is_the_frame_on_screen(tmp_path, variable, rng):
    if variable:
        times = np.cumsum(rng.choice([0.05, 0.1, 0.2], size=60))
        times = np.round(times - times[0], 3)  # as stored: millisecond timestamps
    else:
        times = np.arange(60) / 10.0  # 10 fps, 6 s
    path = write_movie(tmp_path / "m.mkv", list(times))
    grid = TrGrid.single(tr=1.5, start=0, stop=3)
    aligned = extract_frames(path, grid, (32, 16), 3)
    assert aligned.values.shape == (3, 3, 3, 16, 32) and aligned.values.dtype == np.uint8  # 4x smaller than float32
    assert aligned.valid.all()
    for tr_index, row in enumerate(sample_times(grid, 3)):
        for k, t in enumerate(row):
            grey = aligned.values[tr_index, k].mean()
            assert abs(grey - level(expected_index(times, t))) < 4, (tr_index, k, t)


def test_movie_shorter_than_fmri_is_padded_and_said(tmp_path, caplog):
    path = write_movie(tmp_path / "m.mkv", list(np.arange(40) / 10.0))  # 4 s
    aligned = extract_frames(path, TrGrid.single(tr=1.5, start=0, stop=5), (32, 16), 2)
    assert aligned.valid.tolist() == [True, True, False, False, False]
    assert np.all(aligned.values[2:] == 0)
    assert "3 TRs (crop TRs 2..4) have no video" in aligned.meta["notes"][0]
    assert "have no video" in caplog.text


def test_movie_longer_than_fmri_is_trimmed_and_said(tmp_path):
    path = write_movie(tmp_path / "m.mkv", list(np.arange(100) / 10.0))  # 10 s
    aligned = extract_frames(path, TrGrid.single(tr=1.5, start=1, stop=3), (32, 16), 1)
    assert aligned.valid.all()
    assert "not used" in aligned.meta["notes"][0]
    assert abs(aligned.values[0, 0].mean() - level(22)) < 4  # crop start 1 -> t = 2.25 s


def test_real_movie_frames(real_movie):
    aligned = extract_frames(real_movie, TrGrid.single(tr=1.5, start=0, stop=20), (160, 90), 3)
    assert aligned.values.shape == (20, 3, 3, 90, 160) and aligned.valid.all()
    assert aligned.values.dtype == np.uint8 and aligned.values.std() > 0.05 * 255
    assert aligned.meta["frame_rate"] == 24.0


def test_missing_and_unreadable_video_are_named(tmp_path):
    with pytest.raises(InputDataError, match="stimulus.video.path: file not found"):
        extract_frames(tmp_path / "nope.mp4", TrGrid.single(1.5, 0, 2), (8, 8), 1)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a movie at all")
    with pytest.raises(InputDataError, match=r"bad.mp4 is not a readable movie"):
        extract_frames(bad, TrGrid.single(1.5, 0, 2), (8, 8), 1)


def test_the_hrf_step_gives_the_model_frames_in_unit_range(tmp_path):
    """Stored as uint8, the frames reach the model as float32 in [0, 1]: with no HRF delay
    the model's input is exactly the stored frames / 255."""
    from giblet_kedro.pipelines.stimulus.nodes import apply_hrf
    from giblet_kedro.spec.schema import HrfSpec, StimulusSpec

    path = write_movie(tmp_path / "m.mkv", list(np.arange(60) / 10.0))
    stored = extract_frames(path, TrGrid.single(tr=1.5, start=0, stop=3), (32, 16), 3)
    features = apply_hrf(stored, StimulusSpec(hrf=HrfSpec(kind="none", delay_s=0)))
    assert features.values.dtype == np.float32 and features.meta["units"] == "RGB in [0, 1]"
    np.testing.assert_array_equal(features.values, stored.values.astype(np.float32) / np.float32(255))

"""Several fMRI runs on one movie: each run reads its own part of the movie, the HRF
never carries over from one run into the next, and the runs are checked to follow
each other."""

from __future__ import annotations

import numpy as np
import pytest

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.split import concatenate_runs, split_table, whole_run_table
from giblet_kedro.pipelines.stimulus.nodes import apply_hrf, check_stimulus_alignment, extract_video_frames
from giblet_kedro.spec.schema import FmriSpec, StimulusSpec
from giblet_kedro.stimulus.aligned import GridRun, TrAligned, TrGrid
from tests.stimulus.conftest import level, write_movie


def two_run_split():
    """Run 1: file TRs 0..3; run 2: file TRs 1..4 (crop [1, 5))."""
    return concatenate_runs([split_table(0, 4, 1.5, 0.0, 0.25, run="1"), whole_run_table(1, 5, 1.5, "2", "test")])


def test_window_starts_follow_each_runs_onset():
    grid = TrGrid.from_split(two_run_split(), 1.5, {"1": 0.0, "2": 9.0})
    np.testing.assert_allclose(grid.window_starts(), [0, 1.5, 3, 4.5, 10.5, 12, 13.5, 15])
    assert grid.n_trs == 8 and grid.end_s == pytest.approx(16.5)
    assert [r["run"] for r in grid.describe()["runs"]] == ["1", "2"]


def test_runs_that_overlap_in_the_movie_are_rejected():
    with pytest.raises(InputDataError, match=r"run '2' starts at 3.00 s of the movie, before run '1' ends \(6.00 s\)"):
        TrGrid(tr=1.5, runs=(GridRun("1", 0, 4, 0.0), GridRun("2", 0, 4, 3.0)))


def test_each_run_reads_its_own_part_of_the_movie(tmp_path):
    times = list(np.arange(200) / 10.0)  # 20 s at 10 fps; frame k has grey level(k)
    movie = write_movie(tmp_path / "m.mkv", times)
    fmri = FmriSpec(subjects={"01": ["a", "b"]}, tr=1.5, runs={"1": {"onset_s": 0.0}, "2": {"onset_s": 9.0}})
    stimulus = StimulusSpec(video={"path": str(movie), "size": [32, 16], "frames_per_tr": 1})
    video = extract_video_frames(two_run_split(), fmri, stimulus)
    assert video.values.shape[0] == 8 and video.valid.all()
    centres = np.array([0, 1.5, 3, 4.5, 10.5, 12, 13.5, 15]) + 0.75
    for row, t in enumerate(centres):
        assert abs(video.values[row, 0].mean() - level(int(t * 10))) < 4, (row, t)
    report, _ = check_stimulus_alignment(two_run_split(), video, video, video, video)
    assert report["modalities"]["video"]["run_onsets_s"] == {"1": 0.0, "2": 9.0}


def test_hrf_does_not_carry_over_from_one_run_into_the_next():
    grid = TrGrid.single(1.5, 0, 20).describe()
    grid["runs"] = [{"run": "1", "crop": [0, 10], "onset_s": 0.0, "n_trs": 10},
                    {"run": "2", "crop": [0, 10], "onset_s": 100.0, "n_trs": 10}]
    values = np.zeros((20, 1), np.float32)
    values[9] = 1.0  # an impulse in the last TR of run 1
    out = apply_hrf(TrAligned(values, np.ones(20, bool), {"grid": grid}), StimulusSpec())
    assert out.values[9, 0] == 0.0 or out.values[9, 0] < 0.05  # causal: nothing yet at the impulse
    assert np.all(out.values[10:] == 0.0)  # run 2 starts from silence
    single = apply_hrf(TrAligned(values, np.ones(20, bool), {"grid": TrGrid.single(1.5, 0, 20).describe()}),
                       StimulusSpec())
    assert single.values[10:].max() > 0.2  # without the run boundary the response would spill over
    assert "each of the 2 runs on its own" in out.meta["hrf"]

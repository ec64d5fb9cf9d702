"""The lab's own features on the TR grid: annotation columns, precomputed arrays and a
Praat TextGrid, against values computed by hand and against the Alice authors' own
word-rate regressor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from giblet_kedro.errors import InputDataError
from giblet_kedro.stimulus import hrf
from giblet_kedro.stimulus.aligned import TrGrid
from giblet_kedro.stimulus.features import (
    array_features,
    read_array,
    read_textgrid,
    table_features,
    word_rate,
)
from tests.conftest import REPO

ALICE = REPO / "tests" / "data" / "alice"
LABEL = "stimulus.features.scene"


@pytest.fixture
def segments(tmp_path):
    """Four segments: [0, 3) music, arousal 1; [3, 4) no music, arousal 5; [4, 7) no music,
    arousal empty; [7, 10) music, arousal 2. Column names carry stray spaces."""
    path = tmp_path / "segments.csv"
    pd.DataFrame({"Start Time (s) ": [0, 3, 4, 7], "End Time (s)": [3, 4, 7, 10],
                  " Music Presence": ["Yes", "No", "No", "Yes"],
                  "Arousal - Rater 1": [1.0, 5.0, None, 2.0]}).to_csv(path, index=False)
    return path


def test_table_columns_are_time_weighted_means_and_one_hot_shares(segments):
    grid = TrGrid.single(2.0, 0, 5)  # windows [0,2) [2,4) [4,6) [6,8) [8,10)
    values, valid, names = table_features(segments, "Start Time (s)", "End Time (s)",
                                          {"Music Presence": "categorical", "Arousal - Rater 1": "numeric"}, grid, LABEL)
    assert names == ["Music Presence=No", "Music Presence=Yes", "Arousal - Rater 1"]
    expected = np.array([
        [0.0, 1.0, 1.0],              # [0,2): segment 1 only
        [0.5, 0.5, (1 * 1 + 1 * 5) / 2],  # [2,4): 1 s of each
        [1.0, 0.0, 0.0],              # [4,6): arousal empty over the whole TR: invalid
        [0.5, 0.5, 2.0],              # [6,8): arousal known only over [7,8)
        [0.0, 1.0, 2.0],
    ])
    np.testing.assert_array_equal(valid, [True, True, False, True, True])
    np.testing.assert_allclose(values[valid], expected[valid])
    assert not values[~valid].any()


def test_table_mistakes_are_named(segments, tmp_path):
    grid = TrGrid.single(2.0, 0, 5)
    with pytest.raises(InputDataError, match=r"no column 'Camera Angle'; its columns are \['Start Time \(s\)'"):
        table_features(segments, "Start Time (s)", "End Time (s)", {"Camera Angle": "categorical"}, grid, LABEL)
    with pytest.raises(InputDataError, match=r"column 'Music Presence' is numeric but row 2 holds 'Yes'"):
        table_features(segments, "Start Time (s)", "End Time (s)", {"Music Presence": "numeric"}, grid, LABEL)
    shuffled = tmp_path / "shuffled.csv"
    pd.read_csv(segments).iloc[[0, 2, 1, 3]].to_csv(shuffled, index=False)
    with pytest.raises(InputDataError, match=r"times out of order at row 4: it starts at 3 s, before row 3 \(4 s\)"):
        table_features(shuffled, "Start Time (s)", "End Time (s)", {"Arousal - Rater 1": "numeric"}, grid, LABEL)


def test_a_table_of_two_runs_restarting_at_zero_needs_their_onsets(tmp_path):
    path = tmp_path / "two_runs.csv"
    pd.DataFrame({"Start Time (s)": [0, 5, 0, 5], "End Time (s)": [5, 10, 5, 10], "v": [1, 2, 3, 4]}).to_csv(path)
    grid = TrGrid.single(5.0, 0, 4)
    with pytest.raises(InputDataError, match="run_onsets_s"):
        table_features(path, "Start Time (s)", "End Time (s)", {"v": "numeric"}, grid, LABEL)
    values, valid, _ = table_features(path, "Start Time (s)", "End Time (s)", {"v": "numeric"}, grid, LABEL,
                                      run_onsets_s=[0.0, 10.0])
    np.testing.assert_array_equal(values[:, 0], [1, 2, 3, 4])


def test_array_samples_are_averaged_per_tr_or_interpolated_below_one_per_tr():
    samples = np.arange(40, dtype=float)[:, None] * [1.0, -1.0]  # 4 Hz, 10 s
    times = np.arange(40) / 4.0
    grid = TrGrid.single(1.5, 0, 8)  # windows [0,1.5) ... [10.5,12)
    values, valid = array_features(samples, times, grid, LABEL)
    np.testing.assert_allclose(values[0], [np.mean(range(6)), -np.mean(range(6))])  # t = 0 .. 1.25
    np.testing.assert_allclose(values[1], [np.mean(range(6, 12)), -np.mean(range(6, 12))])  # t = 1.5 .. 2.75
    np.testing.assert_array_equal(valid, [True] * 7 + [False])  # [10.5, 12) lies after the last sample
    slow, slow_valid = array_features(samples[::8], times[::8], grid, LABEL)  # 0.5 Hz: t = 0, 2, 4, 6, 8
    assert slow[1, 0] == 8.0 and slow[2, 0] == 16.0  # [1.5, 3) holds t=2 (value 8); [3, 4.5) holds t=4
    np.testing.assert_allclose(slow[5, 0], np.interp(8.25, [8.0], [32.0]))  # [7.5, 9) holds t=8
    samples_far = np.array([[0.0], [10.0]])
    far, far_valid = array_features(samples_far, np.array([0.0, 10.0]), grid, LABEL)  # no sample inside [3, 4.5)
    np.testing.assert_allclose(far[2, 0], 3.75)  # interpolated at the TR's centre, 3.75 s
    assert far_valid[:7].all() and slow_valid[:6].all()


def test_array_files_and_their_clocks(tmp_path):
    data = np.random.default_rng(0).standard_normal((20, 3))
    np.save(tmp_path / "f.npy", data)
    np.savez(tmp_path / "f.npz", feats=data, t=np.arange(20) * 0.5 + 1.0)
    pd.DataFrame({"time": np.arange(20) * 0.5, "a": data[:, 0], "b": data[:, 1], "name": list("x" * 20)}).to_csv(
        tmp_path / "f.tsv", sep="\t", index=False)
    values, times, names = read_array(tmp_path / "f.npy", LABEL, None, None)
    assert values.shape == (20, 3) and times is None
    values, times, _ = read_array(tmp_path / "f.npz", LABEL, "feats", "t")
    np.testing.assert_array_equal(times, np.arange(20) * 0.5 + 1.0)
    values, times, names = read_array(tmp_path / "f.tsv", LABEL, None, "time")
    assert names == ["a", "b"] and values.shape == (20, 2)
    with pytest.raises(InputDataError, match="has no timestamps; give rate_hz"):
        read_array(tmp_path / "f.npy", LABEL, None, "t")
    with pytest.raises(InputDataError, match=r"say which array holds the features \(key: ...\); it holds"):
        np.savez(tmp_path / "two.npz", a=data, b=data)
        read_array(tmp_path / "two.npz", LABEL, None, None)
    grid = TrGrid.single(1.0, 0, 5)
    with pytest.raises(InputDataError, match="times out of order: sample 2 is at 0.5 s, not after sample 1"):
        array_features(data[:3], np.array([0.0, 1.0, 0.5]), grid, LABEL)
    with pytest.raises(InputDataError, match="sample 1, feature 2 is nan"):
        bad = data[:3].copy()
        bad[1, 2] = np.nan
        array_features(bad, np.arange(3.0), grid, LABEL)


def test_missing_rate_is_a_spec_error():
    from giblet_kedro.errors import SpecError
    from giblet_kedro.spec.load import parse_spec

    with pytest.raises(SpecError, match="stimulus.features.vjepa: say when each sample is: give rate_hz"):
        parse_spec('name: x\nfmri: {subjects: {"01": a.nii.gz}, tr: 1.5}\n'
                   "stimulus: {features: {vjepa: {path: f.npy}}}\n")


def test_textgrid_word_rate_rebuilds_the_alice_authors_regressor():
    """The authors' word-rate regressor (s18, s22: HRF-convolved, on the brain data's rows,
    the first 10 volumes of 2 s dropped) is rebuilt from the TextGrid: words starting in
    each TR, Glover's HRF, volumes at the start of their TR (no slice timing). The match
    peaks exactly at the 10 dropped volumes; one TR off costs a tenth of r."""
    words = read_textgrid(ALICE / "DownTheRabbitHoleFinal_exp120_pad_1.TextGrid", "word", "alice")
    assert len(words) == 2423 and words["text"].iloc[1] == "Alice"
    for subject in ("s18", "s22"):
        theirs = np.loadtxt(ALICE / f"{subject}-rate.txt")
        r = {}
        for dropped in range(0, 21):
            rate, valid = word_rate(words, ["", "sp"], 0.0, TrGrid.single(2.0, dropped, dropped + len(theirs)))
            ours = hrf.convolve(rate, "glover", 2.0, slice_time_ref=0.0)[:, 0]
            r[dropped] = np.corrcoef(ours, theirs)[0, 1]
        assert max(r, key=r.get) == 10, r
        assert r[10] > 0.85 and r[10] - max(r[9], r[11]) > 0.05, r


def test_textgrid_mistakes_are_named(tmp_path):
    with pytest.raises(InputDataError, match=r"has no tier 'words'; its tiers are \['word'\]"):
        read_textgrid(ALICE / "DownTheRabbitHoleFinal_exp120_pad_1.TextGrid", "words", "alice")
    (tmp_path / "x.TextGrid").write_text("just text")
    with pytest.raises(InputDataError, match="is not a Praat TextGrid"):
        read_textgrid(tmp_path / "x.TextGrid", "word", "alice")

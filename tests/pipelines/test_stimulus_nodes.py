"""Stimulus nodes: HRF policy per dtype, absent modalities, the alignment check."""

from __future__ import annotations

import numpy as np
import pytest

from giblet_kedro.fmri.split import split_table
from giblet_kedro.pipelines.stimulus.nodes import apply_hrf, check_stimulus_alignment, extract_video_frames
from giblet_kedro.spec.schema import FmriSpec, StimulusSpec
from giblet_kedro.stimulus.aligned import TrAligned, TrGrid
from giblet_kedro.validation.arrays import validate_tr_aligned

GRID = TrGrid.single(1.5, 0, 10)


def aligned(values, grid: TrGrid = GRID) -> TrAligned:
    return TrAligned(values=values, valid=np.ones(len(values), bool), meta={"grid": grid.describe()})


def test_codes_are_delayed_to_the_hrf_peak_continuous_features_are_convolved():
    from tests.stimulus.test_hrf import integrated_by_hand

    codes = np.zeros((10, 2, 4), np.int16)
    codes[3] = 7
    out = apply_hrf(aligned(codes), StimulusSpec(hrf={"kind": "glover"}))
    lag = int(np.argmax(integrated_by_hand("glover", 1.5, 0.5, 22)))  # nilearn's HRF over TR windows, by hand
    assert lag == 3  # window centre to the volume's centre: 4.5 s (the HRF peaks at 5.04 s)
    expected = np.zeros_like(codes)
    expected[3 + lag] = 7
    np.testing.assert_array_equal(out.values, expected)
    assert not out.valid[:lag].any() and out.valid[lag:].all()
    assert "not convolved" in out.meta["hrf"]
    features = np.zeros((10, 5), np.float32)
    features[3] = 1.0
    out = apply_hrf(aligned(features), StimulusSpec(hrf={"kind": "glover"}))
    assert np.all(out.values[:3] == 0) and out.values[3].max() < 1e-3 * out.values.max()  # causal


def test_none_with_delay_shifts_everything():
    codes = np.arange(10, dtype=np.int16)[:, None]
    out = apply_hrf(aligned(codes), StimulusSpec(hrf={"kind": "none", "delay_s": 4.5}))
    assert out.values[:, 0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6] and not out.valid[:3].any()


def test_absent_modality_is_an_explicit_empty_cache():
    split = split_table(0, 10, 1.5, 0.1, 0.1)
    result = extract_video_frames(split, FmriSpec(subjects={"a": "x"}, tr=1.5), StimulusSpec())
    assert result.values.shape == (10, 0) and not result.valid.any() and result.meta["absent"]
    validate_tr_aligned(result)


def test_alignment_check_rejects_a_stretched_modality():
    split = split_table(0, 10, 1.5, 0.1, 0.1)
    good = aligned(np.zeros((10, 3), np.float32))
    report, modalities = check_stimulus_alignment(split, good, good, good, good)
    assert list(modalities) == ["video", "audio", "text", "features"] and modalities["text"] is good
    assert report["fmri_grid"] == {"tr": 1.5, "runs": [{"run": "1", "crop": [0, 10], "n_trs": 10}], "n_trs": 10}
    other_crop = aligned(np.zeros((10, 3), np.float32), TrGrid.single(1.5, 2, 12))
    with pytest.raises(ValueError, match=r"video features are not on the fMRI TR grid: run '1': crop \[2, 12\] != \[0, 10\]"):
        check_stimulus_alignment(split, other_crop, good, good, good)
    other_tr = aligned(np.zeros((10, 3), np.float32), TrGrid.single(2.0, 0, 10))
    with pytest.raises(ValueError, match="TR 2.0 s != 1.5 s"):
        check_stimulus_alignment(split, good, other_tr, good, good)
    with pytest.raises(ValueError, match="features features are not on the fMRI TR grid"):
        check_stimulus_alignment(split, good, good, good, other_tr)


def test_tr_aligned_validator():
    with pytest.raises(ValueError, match="do not match"):
        validate_tr_aligned(TrAligned(np.zeros((9, 2), np.float32), np.ones(9, bool), {"grid": {"n_trs": 10}}))
    with pytest.raises(ValueError, match="NaN"):
        validate_tr_aligned(aligned(np.full((10, 2), np.nan, np.float32)))

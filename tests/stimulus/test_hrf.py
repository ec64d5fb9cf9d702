"""HRF timing: the kernel against nilearn's oversampled HRF integrated by hand, and a
one-second flash in a real movie file whose response peaks 4-5.5 s later."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from nilearn.glm.first_level.hemodynamic_models import glover_hrf, spm_hrf

from giblet_kedro.pipelines.stimulus.nodes import apply_hrf
from giblet_kedro.spec.schema import HrfSpec, StimulusSpec
from giblet_kedro.stimulus import hrf
from giblet_kedro.stimulus.aligned import TrGrid
from giblet_kedro.stimulus.video import extract_frames


def integrated_by_hand(kind: str, tr: float, ref: float, n_lags: int) -> np.ndarray:
    """nilearn's HRF at oversampling 100 (its own time grid: a linspace over 32 s),
    interpolated onto a 1 ms grid and summed over each window ((d + ref - 1) tr, (d + ref) tr]."""
    make = {"glover": glover_hrf, "spm": spm_hrf}[kind]
    values = make(tr, oversampling=100, time_length=32.0)
    grid = np.linspace(0, 32.0, values.size)
    fine = np.arange(0.0, 32.0, 0.001)
    density = np.interp(fine, grid, values)
    kernel = np.array([density[(fine > (d + ref - 1) * tr) & (fine <= (d + ref) * tr)].sum() for d in range(n_lags)])
    return kernel / kernel.sum()


@pytest.mark.parametrize("kind", ["glover", "spm"])
@pytest.mark.parametrize(("tr", "ref"), [(1.5, 0.5), (1.5, 0.0), (2.0, 0.5), (0.8, 0.5)])
def test_kernel_is_nilearns_oversampled_hrf_integrated_over_each_tr_window(kind, tr, ref):
    kernel = hrf.hrf_kernel(kind, tr, ref)
    np.testing.assert_allclose(kernel, integrated_by_hand(kind, tr, ref, kernel.size), atol=4e-3)
    assert kernel.sum() == pytest.approx(1.0)


def test_the_tr_sampled_kernel_was_one_tr_late():
    """The shipped kernel, ``glover_hrf(tr, oversampling=1)``, put the peak at 6.0 s and
    delayed codes by 4 TRs at 1.5 s; integrated, the peak lag is 3 TRs (window centre to
    volume centre 4.5 s, the HRF peaking at 5.04 s)."""
    old = glover_hrf(1.5, oversampling=1, time_length=32.0)
    assert np.argmax(old) == 4
    assert hrf.peak_lag_trs("glover", 1.5) == 3
    times, mass = hrf.oversampled_hrf("glover", 1.5)
    assert times[np.argmax(mass)] == pytest.approx(5.04, abs=0.01)


def test_the_response_is_causal():
    impulse = np.zeros((40, 1), np.float32)
    impulse[10] = 1.0
    for kind in ("glover", "spm"):
        response = hrf.convolve(impulse, kind, tr=1.5)[:, 0]
        assert np.all(response[:10] == 0)
        assert response[10] < 0.01 * response.max()


def test_shift_delays_rows_and_marks_the_first_invalid():
    values = np.arange(6, dtype=np.int16)[:, None]
    shifted, valid = hrf.shift(values, np.ones(6, bool), 2)
    assert shifted[:, 0].tolist() == [0, 0, 0, 1, 2, 3] and valid.tolist() == [False, False, True, True, True, True]


def flash_movie(path, flash_s: tuple[float, float], duration_s: float = 40.0, fps: int = 20):
    """Dark frames, white from flash_s[0] to flash_s[1]."""
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("mpeg4", rate=1000)
        video.width, video.height, video.pix_fmt = 32, 16, "yuv420p"
        video.time_base = Fraction(1, 1000)  # millisecond timestamps
        for index in range(int(duration_s * fps)):
            t = index / fps
            grey = 250 if flash_s[0] <= t < flash_s[1] else 10
            frame = av.VideoFrame.from_ndarray(np.full((16, 32, 3), grey, np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), video.time_base
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("flash_start", [9.0, 9.3, 9.55, 10.2])
def test_a_one_second_flash_peaks_4_to_5_5_s_later(tmp_path, flash_start):
    """The video feature's response to a 1 s flash peaks in the TR whose window centre
    lies 4-5.5 s after the flash (the old, TR-sampled kernel put it a TR later)."""
    flash = (flash_start, flash_start + 1.0)
    grid = TrGrid.single(tr=1.5, start=0, stop=26)
    frames = extract_frames(flash_movie(tmp_path / "flash.mkv", flash), grid, (32, 16), 3)
    convolved = apply_hrf(frames, StimulusSpec(hrf=HrfSpec(kind="glover")))
    brightness = np.asarray(convolved.values).mean(axis=(1, 2, 3, 4))
    centre = (np.argmax(brightness) + 0.5) * 1.5
    assert 4.0 <= centre - np.mean(flash) <= 5.5, (centre, flash)


def test_convolution_block_by_block_equals_scipy_on_the_whole_array(rng):
    """The lab's video is convolved a block of pixels at a time, from uint8 scaled to
    [0, 1]: the result equals scipy's lfilter on the whole float64 array."""
    from scipy.signal import lfilter

    from giblet_kedro.stimulus.hrf import convolve, hrf_kernel

    frames = rng.integers(0, 256, size=(40, 2, 3, 5, 7), dtype=np.uint8)
    expected = lfilter(hrf_kernel("glover", 1.5), [1.0], frames.astype(np.float64) / 255.0, axis=0)
    got = convolve(frames, "glover", 1.5, scale=1 / 255.0, block_features=16)  # 210 features: 14 blocks
    assert got.dtype == np.float32 and got.shape == frames.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)

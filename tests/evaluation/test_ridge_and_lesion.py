"""The ridge reference and the lesion tools against planted ground truths and numpy by hand."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from giblet_kedro.errors import InputDataError
from giblet_kedro.evaluation.lesion import (
    BrainReadout,
    LayerProjection,
    add_fdr,
    fill_values,
    lesion_statistics,
    random_regions,
    region_voxels,
)
from giblet_kedro.evaluation.metrics import pearson_columns
from giblet_kedro.evaluation.ridge import code_histograms, feature_band, fir_delays, fit_banded_ridge


def test_code_histograms_by_hand():
    codes = np.array([[[0, 0, 3], [1023, 5, 5]]])  # (1 TR, 2 codebooks, 3 frames)
    counts = code_histograms(codes)
    assert counts.shape == (1, 2048)
    expected = np.zeros(2048)
    expected[0], expected[3], expected[1024 + 1023], expected[1024 + 5] = 2, 1, 1, 2
    np.testing.assert_array_equal(counts[0], expected)


def test_fir_delays_never_cross_a_run_boundary():
    x = np.arange(1, 7, dtype=np.float32)[:, None]  # rows 0-2 run 1, rows 3-5 run 2
    lagged = fir_delays(x, [0, 1, 2], np.array([0, 3]))
    np.testing.assert_array_equal(lagged[:, 0], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(lagged[:, 1], [0, 1, 2, 0, 4, 5])
    np.testing.assert_array_equal(lagged[:, 2], [0, 0, 1, 0, 0, 4])


def test_feature_band_standardizes_on_train_rows_and_zeroes_invalid():
    values = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0], [100.0, 5.0]])
    valid = np.array([True, True, True, False])
    band = feature_band(values, valid, np.array([0, 1, 2]), is_codes=False)
    assert band.shape == (4, 1)  # the constant column is dropped
    np.testing.assert_allclose(band[:3, 0], (np.array([1, 3, 5]) - 3) / np.std([1, 3, 5]), rtol=1e-6)
    assert band[3, 0] == pytest.approx((0 - 3) / np.std([1, 3, 5]))  # invalid -> 0 before standardizing


def test_banded_ridge_recovers_a_planted_map_and_the_informative_band(rng):
    """fMRI driven by band 'a' lagged 1 TR; band 'b' is noise. The fit must choose the
    delay set containing 1 (neither the first nor the last offered), weight 'a' over 'b',
    and predict held-out rows well."""
    n, d_a, d_b, v = 240, 30, 300, 20
    a, b = rng.standard_normal((n, d_a)), rng.standard_normal((n, d_b))
    weights = rng.standard_normal((d_a, v))
    lagged = np.zeros_like(a)
    lagged[1:] = a[:-1]
    fmri = lagged @ weights / np.sqrt(d_a) + 0.5 * rng.standard_normal((n, v))
    train, val, test = np.arange(0, 160), np.arange(160, 200), np.arange(200, 240)
    fit = fit_banded_ridge({"a": a.astype(np.float32), "b": b.astype(np.float32)}, fmri, train, val, np.array([0]),
                           [[0], [0, 1], [0, 2]], [0.1, 1.0, 10.0, 100.0, 1000.0], n_iter=10, seed=0)
    assert fit.delays == [0, 1]
    assert fit.band_weights["a"] > 10 * fit.band_weights["b"]
    r = pearson_columns(fit.prediction[test], fmri[test])
    assert r.mean() > 0.8


def _atlas(shape=(6, 5, 4)) -> nib.Nifti1Image:
    labels = np.zeros(shape, dtype=np.int16)
    labels[:3] = 1
    labels[3:, :2] = 2
    return nib.Nifti1Image(labels, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_region_voxels_from_atlas_labels_and_masks_in_mask_order():
    atlas = _atlas()
    mask = np.ones(atlas.shape, bool)
    mask[0, 0, 0] = False
    visual = region_voxels(atlas, [1], mask, atlas.affine, "lesion.regions.visual")
    np.testing.assert_array_equal(visual, (np.asarray(atlas.dataobj) == 1)[mask])
    both = region_voxels(atlas, [1, 2], mask, atlas.affine, "lesion.regions.both")
    assert both.sum() == (np.asarray(atlas.dataobj) > 0)[mask].sum()
    as_mask = nib.Nifti1Image((np.asarray(atlas.dataobj) == 2).astype(np.uint8), atlas.affine)
    np.testing.assert_array_equal(region_voxels(as_mask, [], mask, atlas.affine, "m"),
                                  (np.asarray(atlas.dataobj) == 2)[mask])


def test_region_on_another_grid_is_resampled_and_an_empty_region_is_named():
    atlas = _atlas()
    finer = nib.Nifti1Image(np.repeat(np.repeat(np.repeat(np.asarray(atlas.dataobj), 2, 0), 2, 1), 2, 2),
                            np.diag([1.0, 1.0, 1.0, 1.0]) @ np.array([[1, 0, 0, -0.5], [0, 1, 0, -0.5],
                                                                     [0, 0, 1, -0.5], [0, 0, 0, 1]]))
    mask = np.ones(atlas.shape, bool)
    resampled = region_voxels(finer, [1], mask, atlas.affine, "lesion.regions.visual")
    np.testing.assert_array_equal(resampled, (np.asarray(atlas.dataobj) == 1)[mask])
    with pytest.raises(InputDataError, match=r"lesion.regions.nothing.*labels \[9\].*values inside the mask: \[0, 1, 2\]"):
        region_voxels(atlas, [9], mask, atlas.affine, "lesion.regions.nothing")


def test_random_regions_are_contiguous_of_the_asked_size_and_leave_the_target_out(rng):
    mask = np.ones((8, 8, 8), bool)
    coordinates = np.argwhere(mask)
    target = np.zeros(len(coordinates), bool)
    target[(coordinates[:, 0] < 3)] = True  # a slab
    regions = random_regions(coordinates, 27, 200, rng, exclude=target)
    assert len(regions) == 200
    for region in regions:
        assert region.size == 27 and np.unique(region).size == 27
        assert not target[region].any()  # never overlaps the region it controls for
        inside = coordinates[region]
        assert np.abs(inside - inside.mean(0)).max() <= 3.0  # a compact blob, not scattered voxels
    with pytest.raises(InputDataError, match="no random control region of its size fits"):
        random_regions(coordinates, 500, 1, rng, exclude=target)


def test_fill_values(rng):
    layer = rng.standard_normal((50, 6)).astype(np.float32) + 3.0
    training_mean = np.arange(6, dtype=np.float32)
    voxels = np.array([0, 2])
    assert (fill_values("zero", layer, training_mean, voxels, rng) == 0).all()
    np.testing.assert_array_equal(fill_values("mean", layer, training_mean, voxels, rng), np.tile([0.0, 2.0], (50, 1)))
    noise = fill_values("noise", layer, training_mean, voxels, rng)
    assert abs(pearson_columns(noise, layer[:, voxels])).max() < 0.5 and 0.6 < noise.std() < 1.4


def test_a_lesion_moves_each_decoder_input_as_zeroing_the_layer_would(rng):
    """The projection's shortcut (the region's columns only) equals projecting the
    silenced layer in full, for every decoder."""
    layer = rng.standard_normal((9, 40)).astype(np.float32)
    projection = LayerProjection({m: rng.standard_normal((40, 5)).astype(np.float32) for m in ("video", "text")},
                                 {m: rng.standard_normal(5).astype(np.float32) for m in ("video", "text")})
    voxels = np.array([3, 4, 17])
    fill = rng.standard_normal((9, 3)).astype(np.float32)
    silenced = layer.copy()
    silenced[:, voxels] = fill
    shortcut = projection.lesioned(projection(layer), layer, voxels, fill)
    for name, full in projection(silenced).items():
        np.testing.assert_allclose(shortcut[name], full, atol=1e-5)


def test_lesion_statistics_by_hand(rng):
    per_tr = {"video": rng.normal(0.2, 0.05, 30), "text": np.r_[rng.normal(0.0, 0.05, 28), np.nan, np.nan]}
    randoms = [{"video": v, "text": t} for v, t in zip(rng.normal(0, 0.02, 999), rng.normal(0, 0.02, 999),
                                                     strict=True)]
    out = lesion_statistics(per_tr, randoms, block=5, n_boot=500, rng=rng)
    video, text = out["video"], out["text"]
    assert video["effect"] == pytest.approx(per_tr["video"].mean())
    assert text["effect"] == pytest.approx(np.nanmean(per_tr["text"]))  # padded TRs do not count
    assert video["p"] == pytest.approx(1 / 1000)  # beyond every random region: the smallest p there is
    random_text = np.array([r["text"] for r in randoms])
    assert text["p"] == pytest.approx((1 + (random_text >= text["effect"]).sum()) / 1000)
    assert video["ci95"][0] < video["effect"] < video["ci95"][1] and video["ci95"][0] > 0.1
    regions = {"a": {"effects": out}}
    add_fdr(regions, 0.05)
    assert regions["a"]["effects"]["video"]["fdr_significant"] and not regions["a"]["effects"]["text"]["fdr_significant"]


def test_brain_readout_recovers_a_linear_bottleneck(rng):
    bottleneck = rng.standard_normal((300, 5))
    mixing = rng.standard_normal((5, 40))
    fmri = bottleneck @ mixing + 0.1 * rng.standard_normal((300, 40))
    readout = BrainReadout.fit(fmri[:200], bottleneck[:200], np.logspace(-3, 3, 7))
    decoded = readout(fmri[200:])
    assert pearson_columns(decoded, bottleneck[200:]).min() > 0.95

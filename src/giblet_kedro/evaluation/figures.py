"""Pictures of the evaluation: r-map slices, frame grids, lesion comparisons (matplotlib)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def message_figure(text: str):
    """A small figure that only says ``text`` (a picture the spec has nothing for)."""
    figure = plt.figure(figsize=(4, 1))
    figure.text(0.5, 0.5, text, ha="center", va="center")
    return figure


def _volume(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    volume = np.full(mask.shape, np.nan, dtype=np.float32)
    volume[mask.astype(bool)] = values
    return volume


def _slices(mask: np.ndarray, count: int) -> np.ndarray:
    """``count`` axial slice indices spread over the slices that hold mask voxels."""
    occupied = np.flatnonzero(mask.any(axis=(0, 1)))
    return occupied[np.linspace(0, len(occupied) - 1, min(count, len(occupied))).round().astype(int)]


def r_map_figure(maps: dict[str, np.ndarray], title: str, count: int = 5):
    """Rows: autoencoder r, ridge r, noise ceiling, on one colour scale. Columns: the
    sagittal and coronal slices through the voxel of highest autoencoder r, then
    ``count`` axial slices. Contours on the first row outline voxels significant at the
    evaluation's FDR. Voxel space, first axis left-right (as stored)."""
    mask = np.asarray(maps["mask"], dtype=bool)
    rows = [("autoencoder r", maps["r_model"]), ("ridge r", maps["r_ridge"])]
    if "ceiling" in maps:
        rows.append(("noise ceiling", maps["ceiling"]))
    peak = np.argwhere(mask)[int(np.argmax(maps["r_model"]))]
    views = [("sagittal", 0, int(peak[0])), ("coronal", 1, int(peak[1]))]
    views += [("axial", 2, int(z)) for z in _slices(mask, count)]
    limit = max(float(np.nanmax(np.abs(np.concatenate([v for _, v in rows])))), 1e-3)
    figure, axes = plt.subplots(len(rows), len(views), figsize=(1.8 * len(views), 1.9 * len(rows)), squeeze=False)
    significant = _volume(maps["significant"].astype(np.float32), mask)
    for i, (label, values) in enumerate(rows):
        volume = _volume(values, mask)
        for j, (view, axis_index, index) in enumerate(views):
            axis = axes[i, j]
            cut = np.take(volume, index, axis=axis_index).T
            image = axis.imshow(cut, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
            if i == 0:
                outline = np.nan_to_num(np.take(significant, index, axis=axis_index)).T
                if outline.any():
                    axis.contour(outline, levels=[0.5], colors="k", linewidths=0.6)
                axis.set_title(f"{view} {'xyz'[axis_index]} = {index}", fontsize=7)
            axis.set_xticks([])
            axis.set_yticks([])
            if j == 0:
                axis.set_ylabel(label, fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8, label="Pearson r")
    figure.suptitle(title, fontsize=10)
    return figure


def _frame(video: np.ndarray) -> np.ndarray:
    """(F, 3, H, W) -> the middle frame as (H, W, 3) in [0, 1] (min-max per image)."""
    frame = np.moveaxis(video[video.shape[0] // 2], 0, -1).astype(np.float64)
    low, high = frame.min(), frame.max()
    return (frame - low) / (high - low) if high > low else np.zeros_like(frame)


def frame_grid(rows: dict[str, np.ndarray], tr_labels: list[str], title: str):
    """One row per source (e.g. true, reconstructed, lesioned), one column per TR;
    each cell the middle frame of the TR's (F, 3, H, W) video."""
    n_rows, n_cols = len(rows), len(tr_labels)
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.1 * n_rows + 0.6), squeeze=False)
    for i, (label, videos) in enumerate(rows.items()):
        for j in range(n_cols):
            axis = axes[i, j]
            axis.imshow(_frame(videos[j]))
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                axis.set_title(tr_labels[j], fontsize=7)
            if j == 0:
                axis.set_ylabel(label, fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def lesion_figure(report: dict, title: str):
    """Per region: each modality's loss increase when the region is silenced (bars, with
    the 95% bootstrap interval), against random regions of its size (grey: their 5-95%
    range and median); a star marks effects significant after FDR."""
    regions = list(report["regions"])
    figure, axes = plt.subplots(1, len(regions), figsize=(3.4 * len(regions), 3.2), squeeze=False)
    for axis, region in zip(axes[0], regions, strict=True):
        effects = report["regions"][region]["effects"]
        modalities = list(effects)
        x = np.arange(len(modalities))
        values = np.array([effects[m]["effect"] for m in modalities])
        low = values - np.array([effects[m]["ci95"][0] for m in modalities])
        high = np.array([effects[m]["ci95"][1] for m in modalities]) - values
        axis.bar(x, values, color="tab:red", alpha=0.8, yerr=[low, high], capsize=3, label=region)
        for k, m in enumerate(modalities):
            q05, q50, q95 = effects[m]["random_q05_q50_q95"]
            axis.plot([k + 0.3, k + 0.3], [q05, q95], color="grey", linewidth=3, alpha=0.7,
                      label="random regions 5-95%" if k == 0 else None)
            axis.plot(k + 0.3, q50, "k_", markersize=8)
            if effects[m].get("fdr_significant"):
                axis.text(k, max(values[k] + high[k], 0) * 1.05 + 1e-3, "*", ha="center", fontsize=12)
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_xticks(x, modalities)
        axis.set_title(f"lesion {region} ({report['regions'][region]['voxels']} voxels)", fontsize=9)
        axis.set_ylabel("normalized loss increase")
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def evaluation_figures(maps: dict[str, np.ndarray], predictions: dict[str, np.ndarray], name: str,
                       count: int = 8) -> tuple:
    """The r-map slices and, with video, a grid of true and reconstructed test frames."""
    r_map = r_map_figure(maps, f"{name}: held-out voxel r")
    if "video" not in predictions or not predictions["video_valid"].any():
        return r_map, message_figure("no video modality in this experiment")
    valid = np.flatnonzero(predictions["video_valid"])
    pick = valid[np.linspace(0, len(valid) - 1, min(count, len(valid))).round().astype(int)]
    labels = [f"TR {int(predictions['rows'][i])}" for i in pick]
    grid = frame_grid({"true": predictions["video_target"][pick], "autoencoder": predictions["video"][pick]},
                      labels, f"{name}: test frames (HRF-convolved) and their reconstruction")
    return r_map, grid


def lesion_figures(report: dict, decoded: dict[str, np.ndarray], name: str) -> tuple:
    """The lesion effects against random regions, and the frames decoded with each lesion."""
    if not report["regions"]:
        return message_figure("no lesion section in the spec"), message_figure("no lesion section in the spec")
    bars = lesion_figure(report, f"{name}: lesions ({report['method']}, voxel layer from {report['source']}) "
                                 "vs random regions")
    videos = {key.removeprefix("video_").replace("_", " "): value for key, value in decoded.items()
              if key.startswith("video_")}
    if not videos:
        return bars, message_figure("no video modality in this experiment")
    labels = [f"TR {int(r)}" for r in decoded["rows"]]
    return bars, frame_grid(videos, labels, f"{name}: frames decoded from the voxel layer")


def is_mni(space: str | None) -> bool:
    """Whether a space name (``fmri.space``, or BIDS ``space-``) is an MNI template."""
    return bool(space) and str(space).upper().startswith("MNI")


def world_views(r_map, title: str, threshold: float = 0.1) -> dict:
    """For an r map in MNI space (a NIfTI image): ``stat_map`` (three orthogonal cuts over
    nilearn's bundled MNI152 template), ``glass_brain`` (the maximum projections) and
    ``viewer`` (nilearn's interactive ``view_img`` page, self-contained HTML)."""
    from nilearn import datasets, plotting

    template = datasets.load_mni152_template(resolution=2)  # ships with nilearn: no download
    limit = max(float(np.nanmax(np.abs(np.asarray(r_map.dataobj)))), threshold * 1.01)
    stat = plt.figure(figsize=(9, 3))
    plotting.plot_stat_map(r_map, bg_img=template, threshold=threshold, vmax=limit, figure=stat,
                           display_mode="ortho", title=f"{title}: test r (|r| > {threshold:g}), MNI")
    glass = plt.figure(figsize=(9, 3))
    plotting.plot_glass_brain(r_map, threshold=threshold, vmax=limit, plot_abs=False, colorbar=True, figure=glass,
                              title=f"{title}: test r, glass brain")
    viewer = plotting.view_img(r_map, bg_img=template, threshold=threshold, vmax=limit, title=f"{title}: test r")
    return {"stat_map": stat, "glass_brain": glass, "viewer": viewer.get_standalone()}


def prediction_figure(table, arrays: dict[str, np.ndarray], mask: np.ndarray, title: str, count: int = 5):
    """The predicted response to a movie: each region's mean time course (top; z units,
    movie seconds), and axial slices of each voxel's predicted standard deviation over
    the movie and of each modality's ablation effect (below)."""
    mask = np.asarray(mask, dtype=bool)
    regions = [c for c in table.columns if c not in ("tr", "time_s")]
    maps = [("predicted std (z)", np.asarray(arrays["zscored"]).std(axis=0))]
    maps += [(f"ablate {m}: share of variance", arrays[f"ablation_{m}"]) for m in arrays["ablation_modalities"]]
    slices = _slices(mask, count)
    figure = plt.figure(figsize=(1.8 * max(len(slices), 3), 2.2 + 1.7 * len(maps)))
    grid = figure.add_gridspec(1 + len(maps), len(slices), height_ratios=[1.4] + [1] * len(maps))
    course = figure.add_subplot(grid[0, :])
    if regions:
        for name in regions:
            course.plot(table["time_s"], table[name], label=name, linewidth=1)
        course.legend(fontsize=7, loc="upper right")
    else:
        course.plot(table["time_s"], np.asarray(arrays["zscored"]).mean(axis=1), label="mean over voxels")
        course.legend(fontsize=7)
    course.set_xlabel("movie time (s)", fontsize=8)
    course.set_ylabel("predicted (z)", fontsize=8)
    for i, (label, values) in enumerate(maps, start=1):
        volume = _volume(values, mask)
        limit = max(float(np.nanmax(values)) if np.size(values) else 0.0, 1e-3)
        for j, z in enumerate(slices):
            axis = figure.add_subplot(grid[i, j])
            axis.imshow(volume[:, :, z].T, origin="lower", cmap="magma", vmin=0, vmax=limit)
            axis.set_xticks([])
            axis.set_yticks([])
            if j == 0:
                axis.set_ylabel(label, fontsize=7)
            if i == 1:
                axis.set_title(f"axial z = {z}", fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure

"""How well each stimulus modality is reconstructed, against its chance level."""

from __future__ import annotations

from typing import Any

import numpy as np

from giblet_kedro.evaluation import metrics
from giblet_kedro.evaluation.model import TrainedModel


def reconstruction_metrics(trained: TrainedModel, outputs: dict[str, np.ndarray],
                           targets: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per modality, on the valid rows: the normalized loss (1 = predicting every
    feature's training mean, or each codebook's marginal); video frame r and PSNR (raw
    units, data range of the true frames); audio code accuracy against always guessing
    each codebook's most frequent training code; text cosine and top-1/top-5 retrieval
    among the rows against chance; features: each column's r over the valid rows."""
    losses = trained.normalized_losses(outputs, targets)
    report: dict[str, Any] = {}
    for name in trained.modalities:
        valid = targets[f"{name}_valid"].astype(bool)
        if not valid.any():
            report[name] = {"valid_trs": 0}
            continue
        entry: dict[str, Any] = {"valid_trs": int(valid.sum()), "normalized_loss": losses[name]}
        if name == "audio" and trained.job.shapes.audio_is_codes:
            codes, target = outputs["audio"].argmax(axis=2)[valid], targets["audio"][valid]
            train_rows = np.asarray(trained.job.train_rows)
            train_codes = np.load(trained.job.paths.values["audio"], mmap_mode="r")[train_rows]
            entry["code_accuracy"] = float((codes == target).mean())
            entry["majority_code_accuracy"] = metrics.majority_code_accuracy(np.asarray(train_codes), target)
        else:
            stats = trained.stats[name]
            pred, true = outputs[name][valid], targets[name][valid]
            entry["sample_r_mean"] = float(metrics.frame_correlation(pred, true).mean())
            raw_pred, raw_true = pred * stats.scale + stats.mean, true * stats.scale + stats.mean
            if name == "video":
                data_range = float(raw_true.max() - raw_true.min()) or 1.0
                entry["psnr_db_mean"] = float(metrics.psnr(raw_pred, raw_true, data_range).mean())
                entry["psnr_data_range"] = data_range
            if name == "features":  # which of the lab's features the brain carries, column by column
                entry["column_r"] = dict(zip(trained.job.feature_columns or map(str, range(true.shape[1])),
                                             map(float, metrics.pearson_columns(pred, true)), strict=True))
            if name == "text":
                entry["cosine_mean"] = float(metrics.cosine_rows(raw_pred, raw_true).mean())
                index = np.arange(len(raw_true))
                for k in (1, 5):
                    entry[f"top{k}_retrieval"] = metrics.retrieval_top_k(raw_pred, raw_true, index, k)
                    entry[f"top{k}_chance"] = min(k / len(raw_true), 1.0)
        report[name] = entry
    return report

"""Which epoch's weights a training run keeps: the one of the best validation fMRI r.

Every later stage (verification, evaluation, lesions, in silico) reads those weights
(``model_checkpoint``), and every report names the epoch and the reason.
"""

from __future__ import annotations


def selection(record: dict, on_val: bool) -> dict:
    """Why an epoch's weights are the ones kept. ``record``: the epoch's history entry
    (``epoch``, ``val_fmri_r``); ``on_val``: whether there were val TRs to select on."""
    if not on_val:
        return {"epoch": record["epoch"], "val_fmri_r": None, "reason": "no val TRs: the latest epoch"}
    return {"epoch": record["epoch"], "val_fmri_r": record["val_fmri_r"],
            "reason": f"the highest validation fMRI r (mean over voxels) so far: {record['val_fmri_r']:.4f}"}


def weights_kept(history: dict) -> dict:
    """The epoch whose weights every later stage reads, of how many run, and why."""
    epochs = len(history.get("epochs", []))
    selected = history.get("selected") or {"epoch": epochs, "val_fmri_r": None,
                                           "reason": "no selection recorded: the last epoch"}
    return {**selected, "epochs_run": epochs}


def weights_of(history: dict) -> dict:
    """:func:`weights_kept`, and with ``train.seeds`` every seed's selected epoch: the
    fMRI scores are then the seeds' ensemble, the epoch and reason the first seed's."""
    kept = weights_kept(history)
    if history.get("seeds"):
        kept["seeds"] = [{"seed": entry["seed"], "selected": entry["selected"], "epochs_run": entry["epochs_run"]}
                         for entry in history["seeds"]]
        kept["scope"] = "epoch and reason: the first seed's model; the fMRI scores: the seeds' ensemble"
    return kept

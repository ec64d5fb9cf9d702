"""Catalog validators reject what the contract forbids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.errors
import pytest

from giblet_kedro.validation.arrays import (
    validate_fmri_tensor,
    validate_heldout,
    validate_norm_stats,
)
from giblet_kedro.validation.tables import SubjectTable


def good_stats():
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, :] = True
    return {"subject_ids": np.array(["01"]), "run_ids": np.array(["1"]), "mask": mask, "affine": np.eye(4),
            "ddof": np.array(1), "train_trs": np.arange(10), "subject_01_mean": np.zeros(3),
            "subject_01_std": np.ones(3), "subject_01_run_1_mean": np.zeros(3), "subject_01_run_1_std": np.ones(3)}


def test_good_stats_pass():
    validate_norm_stats(good_stats())


@pytest.mark.parametrize(("key", "value", "message"), [
    ("subject_01_std", np.array([1.0, 0.0, 1.0]), "zero entries"),
    ("subject_01_run_1_std", np.array([1.0, 0.0, 1.0]), "subject_01_run_1_std has zero entries"),
    ("subject_01_mean", np.zeros(4), "shape"),
    ("subject_01_mean", np.array([0, np.nan, 0]), "NaN"),
    ("mask", np.zeros((3, 3, 3), bool), "non-empty"),
    ("train_trs", np.array([3, 2, 1]), "increasing"),
])
def test_bad_stats_are_rejected(key, value, message):
    stats = good_stats()
    stats[key] = value
    with pytest.raises(ValueError, match=message):
        validate_norm_stats(stats)


@pytest.mark.parametrize("key", ["subject_01_std", "subject_01_run_1_mean"])
def test_stats_missing_a_subject_key(key):
    stats = good_stats()
    del stats[key]
    with pytest.raises(ValueError, match=key):
        validate_norm_stats(stats)


def test_tensor_validator():
    validate_fmri_tensor(np.zeros((4, 3), np.float32))
    for bad in (np.zeros((4, 3)), np.zeros((4,), np.float32), np.full((2, 2), np.nan, np.float32)):
        with pytest.raises(ValueError):
            validate_fmri_tensor(bad)


def test_heldout_validator():
    validate_heldout({"subject_01": np.zeros((3, 5), np.float32)})
    with pytest.raises(ValueError, match="disagree"):
        validate_heldout({"subject_01": np.zeros((3, 5), np.float32), "subject_02": np.zeros((3, 4), np.float32)})


def test_subject_table_schema():
    row = {"subject_id": "01", "run": "1", "path": "a", "nx": 2, "ny": 2, "nz": 2, "n_trs_file": 10, "tr_s": 1.5,
           "dtype": "int16", "scl_slope": 1.0, "scl_inter": 0.0, "crop_start": 0, "crop_stop": 10}
    SubjectTable.validate(pd.DataFrame([row, {**row, "subject_id": "02"}]))
    with pytest.raises(pandera.errors.SchemaError):
        SubjectTable.validate(pd.DataFrame([row, row]))  # duplicate subject and run
    SubjectTable.validate(pd.DataFrame([row, {**row, "run": "2", "crop_stop": 8}]))  # runs differ in crop
    with pytest.raises(pandera.errors.SchemaError):  # one run, two crops
        SubjectTable.validate(pd.DataFrame([row, {**row, "subject_id": "02", "crop_stop": 8}]))
    with pytest.raises(pandera.errors.SchemaError):
        SubjectTable.validate(pd.DataFrame([row, {**row, "subject_id": "02", "nx": 3}]))  # two grids
    with pytest.raises(pandera.errors.SchemaError):
        SubjectTable.validate(pd.DataFrame([{**row, "crop_stop": 11}]))  # crop past the run

"""How much the subjects agree: which voxels are reliable (val rows) and the noise
ceiling (test rows), from each subject's cleaned, z-scored data.

The ``cross_subject`` tensor holds only the subjects' mean, so the val and test rows of
each subject's runs are read from the fMRI stage's normalized runs (its map-reduce
partials; no run is read or cleaned again): ``(n_subjects, n_rows, n_voxels)`` float32 per
row set (about 160 MB for 5 subjects, 95 rows and 83,138 voxels).
"""

from __future__ import annotations

import numpy as np

from giblet_kedro.evaluation import metrics, nulls


def agreement_arrays(val: np.ndarray, test: np.ndarray, target: str, min_shift: int, draws: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per voxel: the mean pairwise inter-subject r on the val rows and its p-value against
    every subject shifted independently (which voxels are reliable), and on the test rows
    the mean pairwise r and the noise ceiling it gives.

    val, test : (n_subjects, n_rows, n_voxels). target : ``average`` (the model predicts
    the subjects' mean, ``cross_subject``) or ``subject`` (``per_subject``).
    """
    n_subjects = len(test)
    out: dict[str, np.ndarray] = {"n_subjects": np.array(n_subjects), "val_trs": np.array(val.shape[1]),
                                  "test_trs": np.array(test.shape[1])}
    if n_subjects < 2:
        return out
    rho = nulls.mean_pairwise_isc(test)
    out |= {"test_rho": rho, "ceiling": metrics.noise_ceiling(rho, n_subjects, target)}
    if val.shape[1] >= 2 * min_shift + 1:
        test_val = nulls.isc_null(val, min_shift, draws, rng)
        out |= {"val_isc": test_val.observed, "val_p": test_val.p, "val_null_draws": np.array(test_val.draws),
                "val_null_distinct": np.array(test_val.distinct), "val_null_kind": np.array(test_val.kind)}
    return out

"""Cleaned values must not depend on how many threads BLAS uses (the runner, the core
count): every runner writes the same bits."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from giblet_kedro.fmri.clean import blockwise_operator, clean_run
from giblet_kedro.fmri.reader import read_header
from giblet_kedro.spec.schema import CleanSpec
from tests.conftest import write_run


@pytest.mark.serial  # two BLAS threads on a core shared with another test process
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: BLAS cannot use a second thread")
def test_cleaning_is_bitwise_the_same_with_one_or_two_blas_threads(tmp_path, rng):
    """A float32 product this size rounds differently on 1 and 2 OpenBLAS threads (checked
    here first, so the test can fail); the cleaning does not."""
    op = rng.standard_normal((120, 120)).astype(np.float32)
    data = rng.standard_normal((120, 20_000)).astype(np.float32)
    with threadpool_limits(1):
        one = op @ data
    with threadpool_limits(2):
        two = op @ data
    if one.tobytes() == two.tobytes():
        pytest.skip("this BLAS rounds the same on 1 and 2 threads: nothing to guard against")

    run = rng.standard_normal((25, 20, 40, 120)) * 100 + 1000
    header = read_header(nib.load(write_run(tmp_path / "run.nii.gz", run, dtype=np.float32)), "run")
    clean = CleanSpec(detrend=True, high_pass_hz=0.01)
    results = []
    for threads in (1, 2):
        with threadpool_limits(threads):
            operator = blockwise_operator([slice(0, 90), slice(90, 120)], 1.5, clean, None)
            results.append(clean_run(header, (0, 120), None, operator, block_trs=40))
    assert results[0].tobytes() == results[1].tobytes()

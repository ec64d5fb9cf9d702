"""Cross-subject consistency checks, from headers alone (no voxel data is read)."""

from __future__ import annotations

import logging
import math

import numpy as np

from giblet_kedro.errors import InputDataError
from giblet_kedro.fmri.reader import RunHeader

log = logging.getLogger(__name__)

TR_REL_TOL = 0.01
AFFINE_ATOL_MM = 1e-3


def check_tr(header: RunHeader, expected_s: float) -> None:
    """The header's TR must equal the spec's ``fmri.tr`` (in seconds).

    A header TR of 0 means "not recorded" and is accepted with a warning. A value that
    equals the spec's TR in milliseconds but is labelled seconds (nibabel's
    ``example4d.nii.gz`` says 2000 "sec") is rejected with that diagnosis rather than
    trusted.
    """
    if header.tr_value == 0:
        log.warning("%s: header records no TR; using fmri.tr = %g s", header.label, expected_s)
        return
    if math.isclose(header.tr_seconds, expected_s, rel_tol=TR_REL_TOL):
        return
    message = (
        f"{header.label}: {header.path} header TR is {header.tr_value:g} {header.time_unit} "
        f"but fmri.tr is {expected_s:g} s"
    )
    if header.time_unit in ("sec", "unknown") and math.isclose(
        header.tr_value / 1000.0, expected_s, rel_tol=TR_REL_TOL
    ):
        message += (
            f"; {header.tr_value:g} seconds per volume is implausible: the header almost certainly "
            "holds milliseconds labelled as seconds. Fix its units (e.g. with nibabel: "
            "img.header.set_xyzt_units(t='msec')) rather than trusting it"
        )
    raise InputDataError(message)


def check_space(what: str, grid: tuple[int, ...], affine: np.ndarray,
                reference: str, reference_grid: tuple[int, ...], reference_affine: np.ndarray) -> None:
    """``what`` (a run or a mask) must have ``reference``'s voxel grid and affine
    (within 1 micrometre); the error names both and the largest difference."""
    if tuple(grid) != tuple(reference_grid):
        raise InputDataError(
            f"{what} has voxel grid {tuple(grid)} but {reference} has {tuple(reference_grid)}; "
            "everything must be in the same space (resample first)"
        )
    if not np.allclose(affine, reference_affine, atol=AFFINE_ATOL_MM, rtol=0):
        diff = float(np.abs(np.asarray(affine) - reference_affine).max())
        raise InputDataError(
            f"{what} has a different affine from {reference} (largest difference {diff:.4g} mm); "
            f"everything must be in the same space\n"
            f"  {reference}:\n{np.array2string(np.asarray(reference_affine), precision=3)}\n"
            f"  {what}:\n{np.array2string(np.asarray(affine), precision=3)}"
        )


def check_same_space(reference: RunHeader, other: RunHeader) -> None:
    """Two runs share one voxel grid and affine."""
    check_space(f"{other.label}: {other.path}", other.grid, other.affine,
                reference.label, reference.grid, reference.affine)


def resolve_crop(headers: list[RunHeader], trs: tuple[int, int] | None, key: str = "fmri.trs") -> tuple[int, int]:
    """The TR range every subject contributes to one run, as ``(start, stop)`` file indices.

    With a crop (spec key ``key``), every subject's run must reach ``stop``; without one,
    all must have the same number of TRs (a silent truncation to the shortest would
    misalign the stimulus).
    """
    if trs is not None:
        start, stop = trs
        short = [h for h in headers if h.n_trs < stop]
        if short:
            listing = ", ".join(f"{h.label} has {h.n_trs}" for h in short)
            raise InputDataError(
                f"{key} asks for TRs [{start}, {stop}) but {listing}; "
                f"accepted: stop <= {min(h.n_trs for h in headers)}"
            )
        return start, stop
    counts = {h.label: h.n_trs for h in headers}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{label}: {n}" for label, n in counts.items())
        raise InputDataError(
            f"subjects have different numbers of TRs ({listing}); give {key}: [start, stop] "
            f"to use the same TRs from each (at most {min(counts.values())})"
        )
    return 0, headers[0].n_trs


def check_runs(headers: list[RunHeader], expected_tr_s: float) -> None:
    """Every run: the spec's TR, and the same space as the first run."""
    if not headers:
        raise InputDataError("fmri.subjects is empty; give at least one subject id -> file")
    for header in headers:
        check_tr(header, expected_tr_s)
        check_same_space(headers[0], header)

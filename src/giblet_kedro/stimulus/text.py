"""Scene annotations on the TR grid: CLIP (open_clip) text embeddings per TR.

Segments are matched to embeddings by *position* in a cleaned, re-indexed table, never
by DataFrame labels (the lab's code mixed the two, so dropping one empty row shifted
every later text). Each distinct text is embedded once. A TR takes the mean of the
embeddings of the segments that overlap its window; a TR that no segment overlaps is
zero and marked invalid (no silent forward-fill).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from giblet_kedro.errors import InputDataError
from giblet_kedro.progress import progress
from giblet_kedro.stimulus.aligned import TrAligned, TrGrid
from giblet_kedro.stimulus.features import read_table, read_textgrid
from giblet_kedro.stimulus.weights import RANDOM, describe_weights

log = logging.getLogger(__name__)
LABEL = "stimulus.text.annotations"


SILENCES = ("", "sp", "sil", "<sil>")


def textgrid_segments(path: Path, columns: list[str]) -> pd.DataFrame:
    """A Praat TextGrid as segments: the intervals of the tier named by ``columns[0]``
    (e.g. the Alice transcript's ``word`` tier), silences left out; ``row`` is the
    interval's number in the tier (1-based)."""
    if len(columns) != 1:
        raise InputDataError(f"{LABEL}: {path} is a TextGrid: name one tier in 'columns' (e.g. [word]), "
                             f"not {columns}")
    tier = read_textgrid(path, columns[0].strip(), LABEL)
    spoken = ~tier["text"].str.strip().isin(SILENCES)
    return pd.DataFrame({"start_s": tier["start_s"][spoken], "end_s": tier["end_s"][spoken],
                         "text": tier["text"][spoken].str.strip(),
                         "row": np.flatnonzero(spoken.to_numpy()) + 1}).reset_index(drop=True)


def read_segments(path: Path, start: str, end: str, columns: list[str],
                  run_onsets_s: list[float] | None = None) -> pd.DataFrame:
    """The annotation table (or a Praat TextGrid tier) as segments in movie seconds.

    Returns a table with ``start_s``, ``end_s``, ``text`` and ``row`` (the spreadsheet
    row it came from), indexed 0..n-1. Column names are matched after stripping spaces
    (the Sherlock file has trailing ones). Rows without times or without text are
    dropped and counted. Times that jump back (the Sherlock table restarts at 0 s in
    its second run) start a new run: its times are offset by ``run_onsets_s[run]``
    when given, otherwise those rows are left out with a warning.
    """
    if path.suffix.lower() == ".textgrid":
        return textgrid_segments(path, columns)
    table = read_table(path, LABEL)  # column names stripped of stray spaces
    wanted = [c.strip() for c in (start, end, *columns)]
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise InputDataError(f"{LABEL}: {path} has no column(s) {missing}; its columns are {list(table.columns)}")
    start, end, columns = wanted[0], wanted[1], wanted[2:]

    starts = pd.to_numeric(table[start], errors="coerce").to_numpy(dtype=float)
    ends = pd.to_numeric(table[end], errors="coerce").to_numpy(dtype=float)
    pieces = table[columns].apply(lambda col: col.map(lambda v: "" if pd.isna(v) else str(v).strip()))
    texts = pieces.apply(lambda row: " ".join(p for p in row if p), axis=1).to_numpy(dtype=object)
    rows = np.arange(len(table)) + 2  # spreadsheet row numbers (1 = header)

    timed = np.isfinite(starts) & np.isfinite(ends)
    if (~timed).any():
        log.warning("%s: %d rows without start/end times are skipped (rows %s...)", path.name,
                    int((~timed).sum()), rows[~timed][:5].tolist())
    reversed_rows = timed & (ends < starts)
    if reversed_rows.any():
        raise InputDataError(f"{LABEL}: {path} rows {rows[reversed_rows][:10].tolist()} end before they start "
                             f"({end} < {start})")

    starts, ends, texts, rows = starts[timed], ends[timed], texts[timed], rows[timed]
    run = np.concatenate([[0], np.cumsum(np.diff(starts) < -1e-6)]).astype(int)
    n_runs = int(run.max()) + 1 if run.size else 1
    if n_runs > 1:
        if run_onsets_s is None:
            log.warning("%s: times restart at 0 s at row %d (a later run); without stimulus.text.run_onsets_s "
                        "the %d rows from there on are not used", path.name, int(rows[run > 0][0]),
                        int((run > 0).sum()))
            keep = run == 0
            starts, ends, texts, rows, run = starts[keep], ends[keep], texts[keep], rows[keep], run[keep]
        elif len(run_onsets_s) < n_runs:
            raise InputDataError(f"{LABEL}: {path} has {n_runs} runs (times restart at 0) but "
                                 f"stimulus.text.run_onsets_s gives {len(run_onsets_s)} onsets")
    if run_onsets_s is not None:
        offsets = np.asarray(run_onsets_s, dtype=float)[run]
        starts, ends = starts + offsets, ends + offsets
    has_text = np.array([bool(t) for t in texts], dtype=bool)
    if (~has_text).any():
        log.warning("%s: %d timed rows have no text in %s and are skipped", path.name, int((~has_text).sum()), columns)
    return pd.DataFrame({"start_s": starts[has_text], "end_s": ends[has_text],
                         "text": texts[has_text].astype(str), "row": rows[has_text]}).reset_index(drop=True)


def build_clip(model_name: str, weights: str | None, seed: int):
    """open_clip's architecture with random (seeded) weights (``weights``: ``random`` or
    ``None``), or a local checkpoint file."""
    import open_clip

    weights = None if weights == RANDOM else weights
    torch.manual_seed(seed)
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=weights)
    except RuntimeError as exc:
        raise InputDataError(f"stimulus.text: cannot build open_clip model {model_name!r}"
                             f"{' from ' + weights if weights else ''}: {exc}") from None
    model.eval()
    return model, open_clip.get_tokenizer(model_name)


def embed_texts(texts: list[str], model, tokenizer, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """(n_texts, dim) float32, L2-normalised CLIP text embeddings, in the order given."""
    model = model.to(device)
    out = []
    with torch.no_grad(), progress("text (CLIP)", len(texts), "segments") as advance:
        for i in range(0, len(texts), batch_size):
            batch = texts[i:i + batch_size]
            features = model.encode_text(tokenizer(batch).to(device)).float()
            out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
            advance(len(batch))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def segments_on_grid(segments: pd.DataFrame, text_embeddings: np.ndarray, text_index: np.ndarray,
                     grid: TrGrid) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding of the segments overlapping each TR window.

    ``text_index[k]`` is the row of ``text_embeddings`` for segment ``k`` (by position).
    Returns values (n_trs, dim) float32 and valid (n_trs,) bool.
    """
    onsets = grid.window_starts()
    overlap = (segments["start_s"].to_numpy()[None, :] < onsets[:, None] + grid.tr) & \
              (segments["end_s"].to_numpy()[None, :] > onsets[:, None])
    counts = overlap.sum(axis=1)
    summed = overlap.astype(np.float32) @ text_embeddings[text_index]
    values = np.where(counts[:, None] > 0, summed / np.maximum(counts, 1)[:, None], 0.0).astype(np.float32)
    return values, counts > 0


def extract_text(path: Path, grid: TrGrid, start: str, end: str, columns: list[str], model_name: str,
                 weights: str | None, seed: int, run_onsets_s: list[float] | None = None,
                 batch_size: int = 64, device: str = "cpu") -> TrAligned:
    segments = read_segments(path, start, end, columns, run_onsets_s)
    if segments.empty:
        raise InputDataError(f"{LABEL}: {path} has no segment with times and text in columns {columns}")
    distinct, text_index = np.unique(segments["text"].to_numpy(), return_inverse=True)
    model, tokenizer = build_clip(model_name, weights, seed)
    embeddings = embed_texts(list(distinct), model, tokenizer, batch_size, device)
    values, valid = segments_on_grid(segments, embeddings, text_index, grid)
    notes = []
    if (~valid).any():
        notes.append(f"text: {int((~valid).sum())} of {grid.n_trs} TRs overlap no annotated segment; "
                     "they are zero and marked invalid (no forward-fill)")
        log.warning(notes[-1])
    return TrAligned(values=values, valid=valid, meta={
        "modality": "text", "grid": grid.describe(), "source": str(path), "model": model_name,
        "weights": describe_weights(weights, "random (seeded)"), "columns": columns, "n_segments": len(segments),
        "n_distinct_texts": len(distinct), "units": "L2-normalised CLIP text embedding, mean over overlapping segments",
        "layout": "(n_trs, embedding_dim)", "forward_fill": False, "notes": notes})

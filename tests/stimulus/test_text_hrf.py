"""Annotations on the TR grid (with the Sherlock table's quirks) and the causal HRF."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from giblet_kedro.errors import InputDataError
from giblet_kedro.stimulus import text
from giblet_kedro.stimulus.aligned import TrGrid

START, END, SCENE = "Start Time (s) ", "End Time (s) ", "Scene Details - A Level "  # trailing spaces


def sherlock_like(tmp_path, suffix=".xlsx") -> pd.DataFrame:
    table = pd.DataFrame({
        START: [0.0, 3.0, None, 6.0, 9.5, 0.0, 4.0],
        END: [3.0, 6.0, None, 9.0, 12.0, 4.0, 8.0],
        SCENE: ["opening", "hall", "no time row", "street", "", "run two a", "run two b"],
        "Name - All": ["Sherlock", None, "x", "John", "Molly", "Sherlock", "John"],
    })
    path = tmp_path / f"segments{suffix}"
    if suffix == ".xlsx":
        table.to_excel(path, index=False)
    else:
        table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_quirks_trailing_spaces_missing_times_restart_and_empty_text(tmp_path, suffix, caplog):
    path = sherlock_like(tmp_path, suffix)
    segments = text.read_segments(path, "Start Time (s)", "End Time (s)", ["Scene Details - A Level"])
    # no-time row dropped, empty-text row dropped, second run (times restart at 0) left out
    assert segments["text"].tolist() == ["opening", "hall", "street"]
    assert segments["row"].tolist() == [2, 3, 5]  # spreadsheet rows, for the user
    assert list(segments.index) == [0, 1, 2]
    assert "restart at 0 s" in caplog.text and "without start/end times" in caplog.text


def test_second_run_is_used_with_its_onset(tmp_path):
    segments = text.read_segments(sherlock_like(tmp_path), "Start Time (s)", "End Time (s)",
                                  ["Scene Details - A Level", "Name - All"], run_onsets_s=[0.0, 100.0])
    assert segments["text"].tolist()[-2:] == ["run two a Sherlock", "run two b John"]
    assert segments["start_s"].tolist()[-2:] == [100.0, 104.0]
    assert "Molly" in segments["text"].tolist()[3]  # empty scene but a name: joined text is not empty


def test_missing_column_lists_what_exists(tmp_path):
    with pytest.raises(InputDataError, match=r"no column\(s\) \['Scene'\]; its columns are \['Start Time \(s\)'"):
        text.read_segments(sherlock_like(tmp_path), "Start Time (s)", "End Time (s)", ["Scene"])


def test_reversed_segment_is_an_error_with_its_row(tmp_path):
    path = tmp_path / "a.csv"
    pd.DataFrame({"s": [0, 5], "e": [4, 2], "t": ["a", "b"]}).to_csv(path, index=False)
    with pytest.raises(InputDataError, match=r"rows \[3\] end before they start"):
        text.read_segments(path, "s", "e", ["t"])


def test_segments_on_grid_is_the_mean_of_overlapping_by_position():
    segments = pd.DataFrame({"start_s": [0.0, 2.0, 2.5, 7.0], "end_s": [2.0, 2.6, 4.5, 8.0],
                             "text": ["a", "b", "a", "c"]})
    embeddings = np.eye(3, dtype=np.float32)  # planted: text k -> e_k
    index = np.array([0, 1, 0, 2])  # segment -> text row, by position
    values, valid = text.segments_on_grid(segments, embeddings, index, TrGrid.single(tr=1.5, start=0, stop=6))
    # TR windows: [0,1.5) [1.5,3) [3,4.5) [4.5,6) [6,7.5) [7.5,9)
    expected = np.array([[1, 0, 0], [2 / 3, 1 / 3, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 1]])
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert valid.tolist() == [True, True, True, False, True, True]


def test_dropping_a_row_does_not_shift_later_texts(tmp_path):
    path = tmp_path / "a.csv"
    pd.DataFrame({"s": [0, None, 3, 6], "e": [3, None, 6, 9], "t": ["one", "gone", "two", "three"]}).to_csv(path, index=False)
    segments = text.read_segments(path, "s", "e", ["t"])
    distinct, index = np.unique(segments["text"].to_numpy(), return_inverse=True)
    embeddings = np.stack([np.full(4, i, np.float32) for i in range(len(distinct))])
    values, _ = text.segments_on_grid(segments, embeddings, index, TrGrid.single(tr=3.0, start=0, stop=3))
    assert [distinct[int(v[0])] for v in values] == ["one", "two", "three"]


def test_clip_embeddings_offline_random_weights():
    model, tokenizer = text.build_clip("ViT-B-32", None, seed=0)
    embeddings = text.embed_texts(["a red ball", "a detective runs", "a red ball"], model, tokenizer, batch_size=2)
    assert embeddings.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(embeddings[0], embeddings[2], atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1])


def test_missing_or_unknown_annotation_files_are_named(tmp_path):
    with pytest.raises(InputDataError, match=r"stimulus.text.annotations: file not found: .*nope.xlsx"):
        text.read_segments(tmp_path / "nope.xlsx", "s", "e", ["t"])
    odd = tmp_path / "notes.docx"
    odd.write_bytes(b"x")
    with pytest.raises(InputDataError, match=r"extension '.docx'; accepted: .xlsx, .xls, .csv, .tsv"):
        text.read_segments(odd, "s", "e", ["t"])


def test_a_textgrid_is_text_input_word_by_word():
    """The Alice TextGrid as stimulus.text annotations (columns: [word], the tier): every
    spoken word is a segment (silences 'sp' left out), counted here straight from the file."""
    import re

    from giblet_kedro.stimulus.aligned import TrGrid
    from tests.conftest import REPO

    path = REPO / "tests" / "data" / "alice" / "DownTheRabbitHoleFinal_exp120_pad_1.TextGrid"
    raw = re.findall(r'text = "((?:[^"]|"")*)"', path.read_text())
    spoken = [w for w in raw if w.strip() not in ("", "sp")]
    segments = text.read_segments(path, "ignored", "ignored", ["word"])
    assert segments["text"].tolist() == [w.strip() for w in spoken]
    assert segments["text"].iloc[0] == "Alice" and segments["row"].iloc[0] == 2
    grid = TrGrid.single(2.0, 0, 30)
    distinct, index = np.unique(segments["text"].to_numpy(), return_inverse=True)
    embeddings = np.random.default_rng(0).standard_normal((len(distinct), 4)).astype(np.float32)
    values, valid = text.segments_on_grid(segments, embeddings, index, grid)  # what extract_text does next
    assert not valid[:10].any() and valid[10:].all()  # the story starts 20 s in
    first = segments["start_s"].to_numpy() < 22.0  # the words of TR 10, [20, 22)
    np.testing.assert_allclose(values[10], embeddings[index[first]].mean(axis=0), rtol=1e-5)
    with pytest.raises(InputDataError, match="name one tier in 'columns'"):
        text.read_segments(path, "s", "e", ["word", "phone"])

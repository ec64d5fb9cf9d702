"""Figures of the README made from real data: ``python docs/make_figures.py``.

- ``docs/alice_word_rate.png``: the Alice story's word rate, built from the Praat TextGrid
  by ``stimulus.features`` (words starting in each 2 s TR, Glover's HRF, the 10 volumes
  the authors dropped skipped), against the authors' own regressor for s18; and how well
  they match for every number of dropped volumes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from giblet_kedro.stimulus import hrf  # noqa: E402
from giblet_kedro.stimulus.aligned import TrGrid  # noqa: E402
from giblet_kedro.stimulus.features import read_textgrid, word_rate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALICE = ROOT / "tests" / "data" / "alice"


def alice_word_rate(out: Path) -> None:
    words = read_textgrid(ALICE / "DownTheRabbitHoleFinal_exp120_pad_1.TextGrid", "word", "alice")
    theirs = np.loadtxt(ALICE / "s18-rate.txt")

    def ours(dropped: int) -> np.ndarray:
        rate, _ = word_rate(words, ["", "sp"], 0.0, TrGrid.single(2.0, dropped, dropped + len(theirs)))
        return hrf.convolve(rate, "glover", 2.0, slice_time_ref=0.0)[:, 0]

    r = {d: np.corrcoef(ours(d), theirs)[0, 1] for d in range(21)}
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    time = np.arange(len(theirs)) * 2.0
    left.plot(time, z(theirs), label="authors' regressor (s18-rate.txt)", linewidth=1.5)
    left.plot(time, z(ours(10)), label="from the TextGrid (stimulus.features)", linewidth=1, alpha=0.8)
    left.set_xlabel("seconds from the first kept volume")
    left.set_ylabel("z")
    left.set_title(f"Alice word rate after the HRF: r = {r[10]:.2f}")
    left.legend(fontsize=8, loc="upper right")
    right.plot(list(r), list(r.values()), "o-", markersize=3)
    right.axvline(10, color="grey", linestyle=":")
    right.set_xlabel("volumes skipped")
    right.set_ylabel("r")
    right.set_title("alignment")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    alice_word_rate(ROOT / "docs" / "alice_word_rate.png")
    print("wrote docs/alice_word_rate.png")

"""Progress bars with an estimate of time left, for the long steps (movie extraction,
the fMRI passes, the evaluation's null, the lesions).

A bar is drawn only on an interactive terminal: in a batch job's log (SLURM, CI, a
pipe) it stays silent instead of filling the file with carriage returns; the steps
log their own milestones either way.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def interactive() -> bool:
    """Whether progress bars are drawn: stderr is a terminal (rich's own test)."""
    return Console(file=sys.stderr).is_terminal


@contextlib.contextmanager
def progress(description: str, total: float, unit: str) -> Iterator[Callable[..., None]]:
    """Yield ``advance(amount)``; shows done/total ``unit``, elapsed and remaining time,
    on a terminal only."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(unit), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                   console=Console(file=sys.stderr), disable=not interactive())
    with bar:
        task = bar.add_task(description, total=max(int(round(total)), 1))
        yield lambda amount=1: bar.advance(task, amount)

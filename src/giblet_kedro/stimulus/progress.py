"""Progress with an estimate of time left, for the long extraction steps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress(description: str, total: float, unit: str) -> Iterator[callable]:
    """Yield ``advance(amount)``; shows done/total ``unit``, elapsed and remaining time."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(unit), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    with bar:
        task = bar.add_task(description, total=max(int(round(total)), 1))
        yield lambda amount=1: bar.advance(task, amount)

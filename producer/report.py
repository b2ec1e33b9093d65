"""What ``trs`` shows a person: a progress bar while a batch runs, a summary table at the end."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.models import TaskResult

__all__ = ["batch_progress", "outcome_counts", "summary_table"]


def batch_progress(console: Console) -> Progress:
    """A progress bar on ``console``; it draws nothing when the console is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


def outcome_counts(results: Iterable[TaskResult]) -> Counter[tuple[str, str]]:
    """How many results per ``(outcome, status)``: a response's status code, or ``-`` for an error."""
    return Counter(
        (result.outcome, str(result.response.status_code) if result.response is not None else "-") for result in results
    )


def summary_table(counts: Counter[tuple[str, str]], *, seconds: float, note: str = "") -> Table:
    total = sum(counts.values())
    table = Table(title=f"{total} tasks in {seconds:.2f} s{note}", title_justify="left")
    table.add_column("outcome")
    table.add_column("status", justify="right")
    table.add_column("tasks", justify="right")
    for (outcome, status), count in sorted(counts.items(), key=lambda item: (item[0][0] != "response", item[0])):
        table.add_row(outcome, status, str(count))
    return table

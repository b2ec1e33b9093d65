"""``trs status`` for a person: rich tables of request topics, consumer groups and reply topics, then the notes."""

from __future__ import annotations

from datetime import timedelta

from rich.console import Console
from rich.table import Table

from producer.cluster_status import ClusterStatus, GroupStatus

__all__ = ["print_status"]


def print_status(status: ClusterStatus, console: Console) -> None:
    console.print(_request_topics(status))
    for group in status.groups:
        console.print(_group(group))
    console.print(_reply_topics(status))
    for note in status.notes:
        console.print(f"note: {note}", markup=False, highlight=False)


def _request_topics(status: ClusterStatus) -> Table:
    table = Table(title=f"request topics at {status.bootstrap_servers}", title_justify="left")
    for column in ("topic", "service", "partitions", "end offsets"):
        table.add_column(column, justify="left" if column in ("topic", "service") else "right")
    for topic in status.request_topics:
        ends = "?" if topic.end_offsets is None else " ".join(str(o) for _, o in sorted(topic.end_offsets.items()))
        table.add_row(topic.name, topic.service, str(topic.partitions), ends)
    return table


def _group(group: GroupStatus) -> Table:
    members = "members unknown" if group.members is None else f"{len(group.members)} members"
    lag = "?" if group.lag is None else str(group.lag)
    table = Table(title=f"group {group.group_id}: {group.state}, {members}, lag {lag}", title_justify="left")
    for column in ("topic", "partition", "end", "committed", "lag", "member"):
        table.add_column(column, justify="left" if column in ("topic", "member") else "right")
    for p in group.partitions:
        table.add_row(p.topic, str(p.partition), _n(p.end), _n(p.committed), _n(p.lag), p.member or "-")
    for member in group.members or []:
        if not member.partitions:
            table.add_row("-", "-", "-", "-", "-", member.member_id)
    return table


def _reply_topics(status: ClusterStatus) -> Table:
    table = Table(title="reply topics, oldest first", title_justify="left")
    for column in ("topic", "created", "age", "expiry"):
        table.add_column(column)
    for topic in status.reply_topics:
        left = topic.expires - status.read_at
        expiry = f"in {_span(left)}" if left.total_seconds() >= 0 else f"expired {_span(-left)} ago"
        table.add_row(
            topic.name, topic.created.isoformat(timespec="seconds"), _span(status.read_at - topic.created), expiry
        )
    return table


def _n(value: int | None) -> str:
    return "?" if value is None else str(value)


def _span(span: timedelta) -> str:
    """``span`` in its largest whole unit: ``42s``, ``7m``, ``3h``, ``2d``."""
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"

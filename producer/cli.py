"""``trs``: run task files, manage TRS topics, and run a cluster on a laptop.

Errors are one line on stderr and a non-zero exit code: 2 for bad usage or a missing file
(click's own), 1 for a bad task file or a broker that doesn't answer. librdkafka's own lines never
reach the terminal: the line for a broker that doesn't answer quotes the latest of them instead.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console

from producer.host_limits import with_host_limits
from producer.report import batch_progress, outcome_counts, summary_table
from producer.runner import DEFAULT_MAX_INFLIGHT, Mode, TaskRunner
from producer.shared_producer import close_shared_producers
from producer.task_file import read_tasks
from producer.topics import DEFAULT_REQUEST_PARTITIONS, TopicAdmin
from shared.errors import BrokerUnavailable, TrsError
from shared.event_loop import event_loop_runner
from shared.kafka_logging import kafka_logger
from shared.models import HttpRequest, Task, TaskResult
from shared.settings import KafkaSettings

__all__ = ["main"]

_DURATION_RE = re.compile(r"^(?P<amount>\d+(?:\.\d+)?)(?P<unit>[smhd]?)$")
# librdkafka opens each line with the name of its thread, which tells a user nothing.
_THREAD_PREFIX_RE = re.compile(r"^\[thrd:[^\]]*\]:\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

bootstrap_option = click.option(
    "--bootstrap-servers",
    envvar="TRS_KAFKA_BOOTSTRAP_SERVERS",
    show_envvar=True,
    help="Kafka bootstrap servers (remote mode and topics). Security settings come from TRS_KAFKA_* variables.",
)


def _kafka(bootstrap_servers: str | None) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap_servers) if bootstrap_servers else KafkaSettings()


def parse_duration(value: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``2h`` or ``7d`` as a ``timedelta``."""
    match = _DURATION_RE.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a duration: use a number with s, m, h or d, such as 30m or 2h")
    return timedelta(seconds=float(match.group("amount")) * _UNIT_SECONDS[match.group("unit")])


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class _KafkaLines(logging.Handler):
    """Keeps librdkafka's lines off the terminal, remembering the latest for a broker error to quote."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.latest: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        text = str(args[2]) if isinstance(args, tuple) and len(args) == 3 else record.getMessage()
        self.latest = _THREAD_PREFIX_RE.sub("", text)


_kafka_lines = _KafkaLines()


def _hold_kafka_lines() -> None:
    logger = kafka_logger()
    if _kafka_lines not in logger.handlers:
        logger.addHandler(_kafka_lines)
    logger.propagate = False
    _kafka_lines.latest = None


def _failure(exc: TrsError) -> click.ClickException:
    """``exc`` as one line; for a broker that didn't answer, with what the Kafka client last said about it."""
    message = str(exc)
    if isinstance(exc, BrokerUnavailable) and _kafka_lines.latest is not None:
        message = f"{message} (last client error: {_kafka_lines.latest})"
    return click.ClickException(message)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
def main() -> None:
    """TRS, the Task Runner Service: run batches of HTTP tasks locally or through Kafka workers."""
    _hold_kafka_lines()


@main.command("run")
@click.argument("tasks_file", metavar="TASKS.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--mode", type=click.Choice(["local", "remote"]), default="local", show_default=True)
@click.option("--output", "-o", type=click.File("w"), default="-", help="Where results go, one JSON line each.")
@click.option("--service", help="Service name; defaults to the first task's.")
@click.option("--max-inflight", type=click.IntRange(min=1), default=DEFAULT_MAX_INFLIGHT, show_default=True)
@click.option(
    "--per-host", type=click.IntRange(1, 100_000), help="At most N requests in flight to any one host, for every task."
)
@click.option(
    "--rate-per-host",
    type=click.FloatRange(0, 100_000, min_open=True),
    help="At most R requests a second to any one host (a second's worth at once), for every task.",
)
@bootstrap_option
def run_command(
    tasks_file: Path,
    mode: Mode,
    output: TextIO,
    service: str | None,
    max_inflight: int,
    per_host: int | None,
    rate_per_host: float | None,
    bootstrap_servers: str | None,
) -> None:
    """Run the tasks in TASKS.jsonl (one Task as JSON per line) as one batch.

    Results are written as they complete, one TaskResult as JSON per line. A progress bar
    shows on a terminal, and a table of outcomes follows at the end.
    """
    try:
        tasks = read_tasks(tasks_file)
    except TrsError as exc:
        raise click.ClickException(str(exc)) from None
    if not tasks:
        raise click.ClickException(f"{tasks_file} holds no tasks")
    tasks = with_host_limits(tasks, per_host=per_host, rate_per_host=rate_per_host)
    options: dict[str, Any] = {"max_inflight": max_inflight}
    if mode == "remote":
        options["kafka"] = _kafka(bootstrap_servers)
    run_batch(tasks, mode=mode, service=service or tasks[0].service_name, output=output, options=options)


def run_batch(
    tasks: Sequence[Task], *, mode: Mode, service: str, output: TextIO | None, options: dict[str, Any]
) -> None:
    """Run ``tasks``, write each result to ``output``, and print the summary table."""
    # The table goes to stdout, unless the results do.
    console = Console(stderr=output is sys.stdout)
    started = time.perf_counter()
    try:
        results = _run_on_loop(_stream(tasks, mode, service, output, options, console))
    except TrsError as exc:
        raise _failure(exc) from None
    console.print(summary_table(outcome_counts(results), seconds=time.perf_counter() - started))


async def _stream(
    tasks: Sequence[Task], mode: Mode, service: str, output: TextIO | None, options: dict[str, Any], console: Console
) -> list[TaskResult]:
    results = []
    with batch_progress(Console(stderr=True)) as progress:
        bar = progress.add_task(f"{mode} batch", total=sum(1 for t in tasks if not t.ignore))
        async with TaskRunner(mode=mode, service_name=service, **options) as runner:
            batch = await runner.launch(tasks)
            async for result in batch:
                results.append(result)
                if output is not None:
                    output.write(result.to_json().decode() + "\n")
                progress.advance(bar)
            await runner.close(batch)
    if output is not None:
        output.flush()
    return results


def _run_on_loop(coroutine: Coroutine[Any, Any, list[TaskResult]]) -> list[TaskResult]:
    with event_loop_runner() as loop:
        return loop.run(coroutine)


@main.group()
def topics() -> None:
    """Create the shared topics, or remove reply topics left behind by crashed clients."""


@topics.command("init")
@click.option("--service", "services", multiple=True, help="Also create this service's request topic. Repeatable.")
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=DEFAULT_REQUEST_PARTITIONS,
    show_default=True,
    help="Partitions of each request topic: the most workers that can share a service.",
)
@bootstrap_option
def topics_init(services: tuple[str, ...], partitions: int, bootstrap_servers: str | None) -> None:
    """Create trs-control, trs-dlq and the request topics of the services named, where missing.

    Per-host limits are kept by each worker. For them to hold across workers, launch with
    partition_key="host", so every task for a host goes to one partition and so to one worker,
    and give a few times more partitions than workers, so the hosts spread evenly over them.
    With partition_key="task" each worker keeps its own limits.
    """
    admin = TopicAdmin(_kafka(bootstrap_servers).librdkafka_config())
    try:
        created = admin.init(services, partitions=partitions)
    except TrsError as exc:
        raise _failure(exc) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {', '.join(created)}" if created else "every topic already exists")


@topics.command("gc")
@click.option(
    "--older-than",
    required=True,
    callback=_duration,
    help="Delete a reply topic once its batch has expired and it was created longer ago than this (30m, 2h, 1d).",
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted, and delete nothing.")
@bootstrap_option
def topics_gc(older_than: timedelta, dry_run: bool, bootstrap_servers: str | None) -> None:
    """Delete reply topics orphaned by clients that never closed their batches.

    A live batch's topic is never deleted: its name carries the batch's expiry. Before deleting,
    it names the topics in a release notice on trs-control and waits a second, so that a client
    still reading one (a clock ahead of the client's) lets go of it first.
    """
    admin = TopicAdmin(_kafka(bootstrap_servers).librdkafka_config())
    try:
        orphans = admin.orphans(older_than) if dry_run else admin.collect_garbage(older_than)
    except TrsError as exc:
        raise click.ClickException(str(exc)) from None
    verb = "would delete" if dry_run else "deleted"
    for topic in orphans:
        click.echo(f"{verb} {topic}")
    click.echo(f"{verb} {len(orphans)} orphaned reply topics")


@main.group()
def dev() -> None:
    """A laptop cluster: the embedded broker (Tansu) plus trs-worker processes."""


@dev.command("up")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--service", "services", multiple=True, default=["demo"], show_default=True, help="Repeatable.")
def dev_up(workers: int, services: tuple[str, ...]) -> None:
    """Run a broker and workers until Ctrl-C; remote runners reach it with the printed bootstrap servers."""
    # The dev tools load only for `trs dev`: the worker image carries `trs` without them.
    from producer.dev.cluster import dev_cluster

    with _stopping_on_signals(), dev_cluster(workers=workers, services=services) as cluster:
        click.echo(f"broker at {cluster.bootstrap_servers}; request topics for: {', '.join(services)}")
        for worker in cluster.workers:
            click.echo(f"worker pid {worker.process.pid}, metrics at {worker.metrics_url}")
        click.echo(f"export TRS_KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap_servers}   # then Ctrl-C here to stop")
        signal.pause()


@dev.command("demo")
@click.option("--tasks", "count", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--max-inflight", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--output", "-o", type=click.File("w"), default=None, help="Also write each result as a JSON line.")
def dev_demo(count: int, workers: int, max_inflight: int, output: TextIO | None) -> None:
    """Start a broker, workers and a stand-in fleet, run one remote batch against it, and stop everything."""
    from producer.dev.cluster import dev_cluster
    from producer.dev.demo_target import demo_target

    service = "demo"
    with _stopping_on_signals(), demo_target() as fleet, dev_cluster(workers=workers, services=[service]) as cluster:
        click.echo(
            f"broker at {cluster.bootstrap_servers} (pid {cluster.broker_pid}); "
            f"workers {', '.join(str(w.process.pid) for w in cluster.workers)}; fleet at {fleet}",
            err=True,
        )
        template = Task(service_name=service, request=HttpRequest(url=f"{fleet}/hosts/node-0/health"), timeout=30)
        runner = TaskRunner(service_name=service)
        tasks = runner.create_task_list(template, count)
        for n, task in enumerate(tasks, start=1):
            task.request.url = f"{fleet}/hosts/node-{n}/health"
        options = {"kafka": _kafka(cluster.bootstrap_servers), "max_inflight": max_inflight}
        try:
            run_batch(tasks, mode="remote", service=service, output=output, options=options)
        finally:
            # Closed while the broker is up: left to the exit, the producer would log the broker's stop as a failure.
            close_shared_producers()


class _Stopped(Exception):
    """SIGTERM arrived; unwinding stops everything that was started."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped()


@contextlib.contextmanager
def _stopping_on_signals() -> Iterator[None]:
    """Turn SIGTERM into an exception, as Ctrl-C already is, so the same cleanup runs for both."""
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    except (_Stopped, KeyboardInterrupt):
        click.echo("stopped; everything it started was shut down", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)

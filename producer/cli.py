"""``trs``: run task files and URL lists, show the cluster, manage TRS topics, and run a cluster on a laptop.

Standard output carries only what a command yields (``trs run``'s result lines, ``trs status``'s
tables or JSON); progress, summaries and errors go to standard error. Errors exit non-zero: 2 for
bad usage or a missing file (click's own), 1 for a bad task file or a broker that doesn't answer;
``trs run`` adds the codes of ``producer.exit_codes``. librdkafka's own lines never reach the
terminal: the line for a broker that doesn't answer quotes the latest of them instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console

from producer.batch import Batch
from producer.cluster_status import DEFAULT_WORKER_GROUP, read_status
from producer.exit_codes import ExitCode, batch_exit_code
from producer.host_limits import with_host_limits
from producer.overrides import TaskOverrides, parse_header
from producer.report import batch_progress, outcome_counts, summary_table
from producer.result_lines import result_line
from producer.runner import DEFAULT_MAX_INFLIGHT, Mode, TaskRunner
from producer.shared_producer import close_shared_producers
from producer.status_report import print_status
from producer.task_file import read_tasks
from producer.topics import DEFAULT_REQUEST_PARTITIONS, TopicAdmin
from producer.url_list import get_task, parse_urls
from shared.errors import BrokerUnavailable, TrsError
from shared.event_loop import event_loop_runner
from shared.kafka_logging import kafka_logger
from shared.models import HttpRequest, Task, TaskResult, normalize_service_name
from shared.settings import KafkaSettings

__all__ = ["main"]

_DURATION_RE = re.compile(r"^(?P<amount>\d+(?:\.\d+)?)(?P<unit>[smhd]?)$")
# librdkafka opens each line with the name of its thread, which tells a user nothing.
_THREAD_PREFIX_RE = re.compile(r"^\[thrd:[^\]]*\]:\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: The service of ``--url`` and ``--urls`` tasks when ``--service`` names none; also their User-Agent.
URL_SERVICE = "trs"

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
@click.version_option(package_name="trs", prog_name="trs")
def main() -> None:
    """TRS, the Task Runner Service: run batches of HTTP tasks locally or through Kafka workers."""
    _hold_kafka_lines()


def _headers(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    try:
        return tuple(parse_header(value) for value in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("run")
@click.argument(
    "tasks_file",
    metavar="[TASKS.jsonl]",
    required=False,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
)
@click.option("--url", "urls", multiple=True, help="GET this URL (no task file needed). Repeatable.")
@click.option(
    "--urls",
    "url_file",
    type=click.File("r"),
    help="GET each URL of this file, one a line ('-' reads standard input); blank and '#' lines are skipped.",
)
@click.option("--mode", type=click.Choice(["local", "remote"]), default="local", show_default=True)
@click.option("--output", "-o", type=click.File("w"), default="-", help="Where result lines go; '-' is stdout.")
@click.option("--service", help=f"Service name; defaults to the first task's, or '{URL_SERVICE}' for --url and --urls.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True, max=86_400),
    help="Seconds each task may take, whatever the file says.",
)
@click.option("--retries", type=click.IntRange(min=0, max=100), help="Retries of each task, whatever the file says.")
@click.option(
    "--header",
    "-H",
    "headers",
    multiple=True,
    callback=_headers,
    help="'Name: value', replacing the tasks' headers of that name. Repeatable.",
)
@click.option("--max-inflight", type=click.IntRange(min=1), default=DEFAULT_MAX_INFLIGHT, show_default=True)
@click.option(
    "--per-host", type=click.IntRange(1, 100_000), help="At most N requests in flight to any one host, for every task."
)
@click.option(
    "--rate-per-host",
    type=click.FloatRange(0, 100_000, min_open=True),
    help="At most R requests a second to any one host (a second's worth at once), for every task.",
)
@click.option(
    "--check-status", is_flag=True, help="Exit 4 when some task got a 4xx, 5 for a 5xx (see the exit codes above)."
)
@bootstrap_option
@click.pass_context
def run_command(
    ctx: click.Context,
    tasks_file: Path | None,
    urls: tuple[str, ...],
    url_file: TextIO | None,
    mode: Mode,
    output: TextIO,
    service: str | None,
    timeout: float | None,
    retries: int | None,
    headers: tuple[tuple[str, str], ...],
    max_inflight: int,
    per_host: int | None,
    rate_per_host: float | None,
    check_status: bool,
    bootstrap_servers: str | None,
) -> None:
    """Run the tasks in TASKS.jsonl (one Task as JSON a line; '-' reads standard input) as one batch,
    or GET the URLs of --url and --urls.

    Standard output carries only the result lines (or --output does), one JSON object a result as it
    completes: the TaskResult plus the task's method, url and labels; each task is labelled with its
    input line. The progress bar and the summary go to standard error.

    \b
    Exit codes:
      0    every task got a response (with --check-status: none 4xx or 5xx)
      1    the batch could not run: a bad task file, a broker that doesn't answer
      2    a bad option or a missing file
      3    some task ended in an error (timeout, connect_error, ...)
      4    with --check-status: some task got a 4xx, and none an error or a 5xx
      5    with --check-status: some task got a 5xx, and none an error
      130  Ctrl-C: the batch was cancelled, each unfinished task written as cancelled
    """
    try:
        tasks = _tasks_to_run(tasks_file, urls, url_file, service)
        TaskOverrides(timeout=timeout, retries=retries, headers=headers).apply(tasks)
        tasks = with_host_limits(tasks, per_host=per_host, rate_per_host=rate_per_host)
        options: dict[str, Any] = {"max_inflight": max_inflight}
        if mode == "remote":
            options["kafka"] = _kafka(bootstrap_servers)
        outcome = run_batch(tasks, mode=mode, service=tasks[0].service_name, output=output, options=options)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        ctx.exit(ExitCode.INTERRUPTED)
    if outcome.interrupted:
        ctx.exit(ExitCode.INTERRUPTED)
    ctx.exit(batch_exit_code(outcome.results, check_status=check_status))


def _tasks_to_run(
    tasks_file: Path | None, urls: tuple[str, ...], url_file: TextIO | None, service: str | None
) -> list[Task]:
    """The tasks of the file, or the GETs of the URLs: one of the two, and at least one task."""
    if (tasks_file is None) == (not urls and url_file is None):
        raise click.UsageError("give either TASKS.jsonl, or URLs with --url and --urls")
    try:
        batch_service = None if service is None else normalize_service_name(service)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--service'") from None
    source = str(tasks_file) if tasks_file is not None else getattr(url_file, "name", "<urls>")
    try:
        if tasks_file is not None:
            tasks = read_tasks(tasks_file, service=batch_service)
        else:
            tasks = _url_tasks(urls, url_file, batch_service or URL_SERVICE)
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{source} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except TrsError as exc:
        raise click.ClickException(str(exc)) from None
    if not tasks:
        raise click.ClickException(f"{source} holds no tasks")
    return tasks


def _url_tasks(urls: tuple[str, ...], url_file: TextIO | None, service: str) -> list[Task]:
    tasks = []
    for number, url in enumerate(urls, start=1):
        try:
            tasks.append(get_task(url, service=service, labels={"arg": str(number)}))
        except ValueError as exc:
            raise click.BadParameter(f"{url[:60]!r}: {exc}", param_hint="'--url'") from None
    if url_file is not None:
        tasks += parse_urls(url_file, name=getattr(url_file, "name", "<urls>"), service=service)
    return tasks


@dataclass(frozen=True)
class BatchOutcome:
    """The results of a batch that ``run_batch`` saw to its end, and whether Ctrl-C cut it short."""

    results: list[TaskResult]
    interrupted: bool


def run_batch(
    tasks: Sequence[Task], *, mode: Mode, service: str, output: TextIO | None, options: dict[str, Any]
) -> BatchOutcome:
    """Run ``tasks``, write each result's line to ``output``, and print the summary on stderr.

    Ctrl-C cancels the batch: each unfinished task ends ``cancelled`` and is written as such. A
    second Ctrl-C stops at once.
    """
    started = time.perf_counter()
    try:
        outcome = _run_on_loop(_stream(tasks, mode, service, output, options))
    except TrsError as exc:
        raise _failure(exc) from None
    seconds = time.perf_counter() - started
    note = " (interrupted: the batch was cancelled)" if outcome.interrupted else ""
    Console(stderr=True).print(summary_table(outcome_counts(outcome.results), seconds=seconds, note=note))
    return outcome


async def _stream(
    tasks: Sequence[Task], mode: Mode, service: str, output: TextIO | None, options: dict[str, Any]
) -> BatchOutcome:
    by_id = {task.id: task for task in tasks}
    results = []
    with _sigint_event() as interrupted, batch_progress(Console(stderr=True)) as progress:
        bar = progress.add_task(f"{mode} batch", total=sum(1 for t in tasks if not t.ignore))
        async with TaskRunner(mode=mode, service_name=service, **options) as runner:
            batch = await runner.launch(tasks)
            canceller = asyncio.create_task(_cancel_on(interrupted, runner, batch))
            try:
                async for result in batch:
                    results.append(result)
                    if output is not None:
                        output.write(result_line(by_id[result.task_id], result) + "\n")
                        output.flush()
                    progress.advance(bar)
            finally:
                canceller.cancel()
            await runner.close(batch)
        return BatchOutcome(results, interrupted.is_set())


@contextlib.contextmanager
def _sigint_event() -> Iterator[asyncio.Event]:
    """An event that the first SIGINT sets; the second one raises ``KeyboardInterrupt`` as usual."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def interrupted() -> None:
        event.set()
        loop.remove_signal_handler(signal.SIGINT)

    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        yield event
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _cancel_on(interrupted: asyncio.Event, runner: TaskRunner, batch: Batch) -> None:
    await interrupted.wait()
    click.echo("interrupted: cancelling the batch", err=True)
    try:
        await runner.cancel(batch)
    except TrsError as exc:
        # The open tasks have ended cancelled all the same; only the workers may not have heard.
        click.echo(str(_failure(exc).message), err=True)


def _run_on_loop(coroutine: Coroutine[Any, Any, BatchOutcome]) -> BatchOutcome:
    with event_loop_runner() as loop:
        return loop.run(coroutine)


@main.command("status")
@click.option(
    "--group",
    "groups",
    multiple=True,
    default=[DEFAULT_WORKER_GROUP],
    show_default=True,
    help="Also show this consumer group, even with no offsets yet. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout, for scripts.")
@bootstrap_option
def status_command(groups: tuple[str, ...], as_json: bool, bootstrap_servers: str | None) -> None:
    """Request topics and their partitions, each consumer group's members, partitions and lag, and
    reply topics by age and expiry, as the broker's admin API tells them.

    What the broker can't tell is shown as '?' and explained in a note.
    """
    try:
        status = read_status(_kafka(bootstrap_servers).librdkafka_config(), groups=groups)
    except TrsError as exc:
        raise _failure(exc) from None
    if as_json:
        click.echo(json.dumps(status.to_json()))
    else:
        print_status(status, Console())


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
            outcome = run_batch(tasks, mode="remote", service=service, output=output, options=options)
        finally:
            # Closed while the broker is up: left to the exit, the producer would log the broker's stop as a failure.
            close_shared_producers()
        if outcome.interrupted:
            raise _Stopped()


class _Stopped(Exception):
    """SIGTERM or Ctrl-C arrived; unwinding stops everything that was started."""


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

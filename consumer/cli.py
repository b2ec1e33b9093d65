"""``trs-worker``: run one worker until SIGTERM.

Every flag has a ``TRS_*`` environment variable, and the flag wins when both are given. Kafka
security settings (SASL, SSL) and their secrets come from the environment only, so no secret
ever sits on a command line; see the README.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from confluent_kafka import KafkaException
from pydantic import ValidationError

from consumer.logs import configure_logging
from consumer.settings import EngineSettings, WorkerSettings
from consumer.worker import Worker, WorkerConfig
from shared.errors import TrsError
from shared.event_loop import event_loop_runner
from shared.settings import KafkaSettings

__all__ = ["main"]

log = logging.getLogger("consumer")

#: Each flag: its name, the settings class and field it sets, and its help.
_FLAGS: list[tuple[str, type[KafkaSettings | EngineSettings | WorkerSettings], str, str]] = [
    ("--bootstrap-servers", KafkaSettings, "bootstrap_servers", "Kafka bootstrap servers, host:port[,host:port]."),
    ("--security-protocol", KafkaSettings, "security_protocol", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."),
    ("--group-id", WorkerSettings, "group_id", "Consumer group the workers share."),
    ("--topics-pattern", WorkerSettings, "topics_pattern", "Regular expression of request topics to subscribe to."),
    ("--topics", WorkerSettings, "topics", "Comma-separated request topics; replaces --topics-pattern."),
    ("--instance-id", WorkerSettings, "instance_id", "Static group membership id, e.g. the pod name."),
    ("--max-inflight", WorkerSettings, "max_inflight", "Most tasks running at once; above it partitions pause."),
    ("--host", WorkerSettings, "host", "Address of the /metrics, /healthz and /readyz server."),
    ("--port", WorkerSettings, "port", "Port of the /metrics, /healthz and /readyz server."),
    ("--grace-period", WorkerSettings, "grace_period", "Seconds tasks in flight get to finish after SIGTERM."),
    ("--session-timeout-ms", WorkerSettings, "session_timeout_ms", "Consumer group session timeout."),
    ("--max-poll-interval-ms", WorkerSettings, "max_poll_interval_ms", "Consumer group max poll interval."),
    ("--consume-batch", WorkerSettings, "consume_batch", "Most messages taken from Kafka in one call."),
    ("--fetch-wait-max-ms", WorkerSettings, "fetch_wait_max_ms", "Longest a fetch waits at the broker for data."),
    ("--metadata-refresh-ms", WorkerSettings, "metadata_refresh_ms", "How often new request topics are looked for."),
    ("--linger-ms", WorkerSettings, "linger_ms", "Longest a result waits to be sent in a batch with others."),
    ("--commit-interval", WorkerSettings, "commit_interval", "Seconds between offset commits."),
    ("--max-message-bytes", WorkerSettings, "max_message_bytes", "Largest result message produced."),
    (
        "--startup-timeout",
        WorkerSettings,
        "startup_timeout",
        "Seconds to become ready (broker, topics, group) before exiting 1; waits as long as it takes without it.",
    ),
    ("--transport", EngineSettings, "transport", "HTTP transport: pyreqwest or httpx."),
    ("--max-response-bytes", EngineSettings, "max_response_bytes", "Largest response body a task may return."),
    ("--ca-bundle", EngineSettings, "ca_bundle", "CA bundle (PEM) trusted for HTTPS targets."),
    ("--client-cert", EngineSettings, "client_cert", "Client certificate (PEM) for mTLS targets."),
    ("--client-key", EngineSettings, "client_key", "Client key (PEM) for mTLS targets."),
    (
        "--allowed-targets",
        EngineSettings,
        "allowed_targets",
        "Comma-separated hosts, *.suffixes and CIDRs tasks may call.",
    ),
    ("--log-format", WorkerSettings, "log_format", "json or text."),
    ("--log-level", WorkerSettings, "log_level", "DEBUG, INFO, WARNING or ERROR."),
]

_PREFIXES: dict[type, str] = {KafkaSettings: "TRS_KAFKA_", EngineSettings: "TRS_ENGINE_", WorkerSettings: "TRS_WORKER_"}


def _envvar(settings: type, field: str) -> str:
    return f"{_PREFIXES[settings]}{field.upper()}"


def _default(settings: type[KafkaSettings | EngineSettings | WorkerSettings], field: str) -> str:
    info = settings.model_fields[field]
    if info.default_factory is not None:
        return "none"
    return "none" if info.default is None else str(info.default)


def _with_flags(command: Any) -> Any:
    for flag, settings, field, text in reversed(_FLAGS):
        command = click.option(
            flag,
            field,
            envvar=_envvar(settings, field),
            show_envvar=True,
            default=None,
            help=f"{text} [default: {_default(settings, field)}]",
        )(command)
    return click.option(
        "--insecure",
        "insecure",
        envvar="TRS_ENGINE_INSECURE",
        show_envvar=True,
        is_flag=True,
        default=None,
        help="Do not verify HTTPS targets' certificates. Explicit opt-in only.",
    )(command)


def _settings(values: dict[str, Any]) -> WorkerConfig:
    given = {name: value for name, value in values.items() if value is not None}

    def pick(settings: type) -> dict[str, Any]:
        return {field: given[field] for flag, owner, field, _ in _FLAGS if owner is settings and field in given}

    engine = pick(EngineSettings)
    if "insecure" in given:
        engine["insecure"] = given["insecure"]
    return WorkerConfig(
        kafka=KafkaSettings(**pick(KafkaSettings)),
        engine=EngineSettings(**engine),
        worker=WorkerSettings(**pick(WorkerSettings)),
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@_with_flags
def main(**values: Any) -> None:
    """Run a TRS worker: consume HTTP tasks from Kafka, run them, produce their results.

    It serves /metrics, /healthz and /readyz on --port, and on SIGTERM drains: it stops
    fetching, lets tasks in flight finish within --grace-period, commits and leaves the group.
    """
    try:
        config = _settings(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise click.UsageError(f"invalid setting: {problems}") from None
    configure_logging(fmt=config.worker.log_format, level=config.worker.log_level)
    try:
        with event_loop_runner() as runner:
            code = runner.run(Worker(config).run())
    except (TrsError, KafkaException, OSError) as exc:
        log.error("trs-worker could not run: %s", exc)
        sys.exit(1)
    sys.exit(code)

"""Security: TLS verified by default, no credential in anything a run leaves, the allowlist on addresses.

The credential test runs a worker (at DEBUG) and clients, in process and as ``trs`` commands, on
tasks whose credential headers and URL passwords are unique canary values, through every outcome
it can provoke. Then it searches everything the run captured: the worker's log and ``/metrics``,
the clients' logs, output and metrics, every dead letter's headers, the results on the reply
topic, error messages and reprs. A canary anywhere is a failure that names where it was found.

A dead letter's value is the original record, credentials included: replaying it needs the task
as it was sent, so ``trs-dlq`` is guarded like the request topics (see the README). Its headers,
the reason among them, hold none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import generate_latest

from producer import ErrorCode, HttpRequest, Task, TaskResult, TaskRunner, TlsConfig, TrsError
from producer.dev.embedded_broker import free_port
from producer.exit_codes import ExitCode
from producer.task_file import parse_tasks
from producer.topics import TopicAdmin
from shared.settings import KafkaSettings
from shared.wire import DLQ_TOPIC, HEADER_DLQ_REASON, HEADER_DLQ_TOPIC, KafkaHeaders, encode_task, header_value
from tests.behaviour.conftest import RunnerFactory, flavour, make_runner, mode, transport
from tests.conftest import Certs
from tests.http_target import HttpTarget
from tests.integration.conftest import new_service
from tests.kafka_io import TestBatch as HandBatch
from tests.kafka_io import new_test_batch, read
from tests.remote_pools import RemotePools
from tests.trs_cli import trs
from tests.waiting import wait_until
from tests.worker_process import WorkerProcess, running_workers

pytestmark = pytest.mark.integration

# The behaviour suite's runner fixtures, so the allowlist test runs in both modes.
__all__ = ["flavour", "make_runner", "mode", "transport"]

#: The credential headers every canary task carries, and how each value starts.
SECRET_HEADERS = {
    "Authorization": "Bearer ",
    "Proxy-Authorization": "Basic ",
    "Cookie": "session=",
    "Set-Cookie": "id=",
    "X-API-Key": "",
    "Api-Key": "",
    "X-Auth-Token": "",
}
#: The worker's allowlist in the credential test: the target's address, and no other.
WORKER_ALLOWLIST = "127.0.0.1/32"


# TLS --------------------------------------------------------------------------------------------


TlsRunnerFactory = Callable[[bool], TaskRunner]


@pytest.fixture(params=[("local", "pyreqwest"), ("local", "httpx"), ("remote", "pyreqwest"), ("remote", "httpx")])
def tls_runner(request: pytest.FixtureRequest) -> TlsRunnerFactory:
    """``tls_runner(insecure)``: a runner of one mode and transport, verifying TLS unless told not to."""
    mode_name, transport_name = request.param
    if mode_name == "local":
        return lambda insecure: TaskRunner(
            mode="local",
            service_name="tls",
            transport=transport_name,
            tls=TlsConfig(insecure=True) if insecure else None,
        )
    # In remote mode TLS and the transport are the worker's: a worker started with just those flags.
    pools: RemotePools = request.getfixturevalue("remote_pools")
    transport_flags: list[tuple[str, str | bool]] = (
        [] if transport_name == "pyreqwest" else [("transport", transport_name)]
    )

    verified, insecure = tuple(transport_flags), tuple(sorted([*transport_flags, ("insecure", True)]))
    # Started here, so that no worker's start blocks the test's event loop.
    pools.start(verified, insecure)

    def remote(skip_verification: bool) -> TaskRunner:
        service = pools.service(insecure if skip_verification else verified)
        return TaskRunner(mode="remote", service_name=service, bootstrap_servers=pools.bootstrap)

    return remote


async def test_tls_is_verified_by_default_and_only_an_explicit_insecure_skips_it(
    tls_runner: TlsRunnerFactory, target: HttpTarget
) -> None:
    # No trust store on this machine knows either certificate's CA.
    urls = [f"{target.https}/ok", f"{target.untrusted}/ok"]

    async def outcomes(insecure: bool) -> list[TaskResult]:
        tasks = [Task(service_name="tls", request=HttpRequest(url=url), timeout=10) for url in urls]
        async with tls_runner(insecure) as runner:
            batch = await runner.launch(tasks)
            done = {r.task_id: r for r in await batch.wait()}
        return [done[t.id] for t in tasks]

    default = await outcomes(insecure=False)
    insecure = await outcomes(insecure=True)

    for result in default:
        assert result.error is not None, result
        assert result.error.code is ErrorCode.TLS_ERROR
        assert result.error.message == "the TLS handshake with the target failed"
        assert result.attempts == 1
    for result in insecure:
        assert result.response is not None, result
        assert result.response.status_code == 200


# The allowlist ----------------------------------------------------------------------------------


async def test_a_host_name_is_allowed_by_the_addresses_it_resolves_to(
    make_runner: RunnerFactory, target: HttpTarget, certs: Certs
) -> None:
    http, https = _localhost(target.http), _localhost(target.https)
    blocked_key, http_key, https_key = (uuid.uuid4().hex for _ in range(3))

    # localhost resolves to 127.0.0.1.
    async with make_runner(allowed_targets=["10.0.0.0/8"]) as runner:
        (blocked,) = await _run(runner, f"{http}/status/200?key={blocked_key}")
    async with make_runner(allowed_targets=["127.0.0.0/8"], tls=TlsConfig(ca_bundle=str(certs.ca))) as runner:
        plain, echo, secure = await _run(
            runner, f"{http}/status/200?key={http_key}", f"{http}/echo", f"{https}/status/200?key={https_key}"
        )

    assert blocked.error is not None, blocked
    assert blocked.error.code is ErrorCode.TARGET_NOT_ALLOWED
    assert blocked.error.message == "the target is not on the allowlist"
    assert blocked.attempts == 0
    assert target.hits(blocked_key) == 0
    for result in (plain, echo, secure):
        assert result.response is not None, result
        assert result.response.status_code == 200
    assert (target.hits(http_key), target.hits(https_key)) == (1, 1)
    # Sent to the checked address, the plain http request still names its host.
    assert echo.response is not None
    headers = {k.lower(): v for k, v in json.loads(echo.response.body)["headers"]}
    assert headers["host"] == urlsplit(http).netloc


def _localhost(base: str) -> str:
    return base.replace("127.0.0.1", "localhost")


async def _run(runner: TaskRunner, *urls: str) -> list[TaskResult]:
    tasks = [Task(service_name="allow", request=HttpRequest(url=url), timeout=10) for url in urls]
    batch = await runner.launch(tasks)
    done = {r.task_id: r for r in await batch.wait()}
    return [done[t.id] for t in tasks]


# Credentials ------------------------------------------------------------------------------------


@dataclass
class Canaries:
    """Unique secret values, each remembered with what carried it."""

    issued: dict[str, str] = field(default_factory=dict)

    def new(self, label: str) -> str:
        value = f"cnry{uuid.uuid4().hex[:16]}"
        self.issued[value] = label
        return value

    def headers(self, label: str) -> list[tuple[str, str]]:
        return [(name, f"{start}{self.new(f'{label}: {name}')}") for name, start in SECRET_HEADERS.items()]

    def url(self, label: str, url: str) -> str:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://user:{self.new(f'{label}: URL password')}@{rest}"

    def task(self, label: str, url: str, **fields: Any) -> Task:
        # Validation refuses a password in a URL, so the tasks that run carry theirs in headers only.
        request = HttpRequest(url=url, headers=self.headers(label))
        return Task(service_name="canary", request=request, **fields)

    def found_in(self, sources: dict[str, str]) -> list[str]:
        """Where each canary turns up: ``"<what carried it> in <source>: <context>"``."""
        found = []
        for where, text in sources.items():
            lowered = text.lower()
            for value, label in self.issued.items():
                at = lowered.find(value)
                if at >= 0:
                    found.append(f"{label} in {where}: ...{text[max(0, at - 100) : at + 30]!r}...")
        return found


Expected = ErrorCode | int
#: Retries that end in well under a second.
FAST_RETRIES = {"retry": {"retries": 2, "backoff_initial": 0.01, "backoff_max": 0.05}}


def provoking_tasks(canaries: Canaries, target: HttpTarget, run: str) -> dict[str, tuple[Task, Expected]]:
    """A task per outcome, each with canaries of its own, and the status or error code it must end with.

    They assume an allowlist of ``WORKER_ALLOWLIST``: ``localhost`` passes it by its address.
    """
    port = urlsplit(target.http).port

    def task(outcome: str, url: str, timeout: float = 10.0, **fields: Any) -> Task:
        return canaries.task(f"{run}, {outcome}", url, timeout=timeout, **fields)

    refused = f"http://127.0.0.1:{free_port()}/"
    failing = f"{target.http}/status/500?key={uuid.uuid4().hex}"
    return {
        "response": (task("response", f"{target.http}/ok"), 200),
        "resolved name": (task("resolved name", f"http://localhost:{port}/ok"), 200),
        "connect_error": (task("connect_error", refused, policy=FAST_RETRIES), ErrorCode.CONNECT_ERROR),
        "timeout": (task("timeout", f"{target.http}/sleep?s=6", timeout=2.0), ErrorCode.TIMEOUT),
        "not allowed": (task("not allowed", f"http://127.0.0.2:{port}/ok"), ErrorCode.TARGET_NOT_ALLOWED),
        "500s": (task("500s", failing, policy=FAST_RETRIES), ErrorCode.RETRIES_EXHAUSTED),
        "tls_error": (task("tls_error", f"{target.https}/ok"), ErrorCode.TLS_ERROR),
        "too large": (task("too large", f"{target.http}/bytes?n=800000"), ErrorCode.RESPONSE_TOO_LARGE),
    }


def outcome_of(result: TaskResult) -> Expected:
    if result.response is not None:
        return result.response.status_code
    assert result.error is not None
    return result.error.code


async def run_and_check(runner: TaskRunner, tasks: dict[str, tuple[Task, Expected]]) -> list[TaskResult]:
    """Run ``tasks`` as one batch and check that each ends as expected."""
    batch = await runner.launch([task for task, _ in tasks.values()])
    results = {r.task_id: r for r in await batch.wait()}
    await runner.close(batch)
    got = {name: outcome_of(results[task.id]) for name, (task, _) in tasks.items()}
    assert got == {name: expected for name, (_, expected) in tasks.items()}
    return list(results.values())


@dataclass(frozen=True)
class BadRecord:
    """A request-topic record the worker must dead-letter."""

    what: str
    value: bytes
    headers: KafkaHeaders
    #: Whether its client can still be told (``invalid_task`` on its reply topic).
    answered: bool


def bad_records(canaries: Canaries, batch: HandBatch, target: HttpTarget) -> list[BadRecord]:
    """A record per way of failing validation, each carrying canaries in its task."""

    def envelope(what: str, **request: Any) -> tuple[dict[str, Any], KafkaHeaders]:
        built = batch.envelope(f"{target.http}/ok", headers=canaries.headers(what))
        value, headers = encode_task(built)
        raw = json.loads(value)
        raw["task"]["request"].update(request)
        return raw, headers

    def record(what: str, raw: dict[str, Any], headers: KafkaHeaders, answered: bool = True) -> BadRecord:
        return BadRecord(what, json.dumps(raw).encode(), headers, answered)

    bad_scheme, headers = envelope("bad scheme", url=canaries.url("bad scheme", "ftp://127.0.0.1/file"))
    crlf, crlf_headers = envelope(
        "CRLF", headers=[["Authorization", f"Bearer {canaries.new('CRLF: injected value')}\r\nX-Injected: 1"]]
    )
    line, line_headers = envelope(
        "line as name", headers=[[f"Authorization: Bearer {canaries.new('line as name')}", "x"]]
    )
    schema, schema_headers = envelope("schema 99", url=canaries.url("schema 99", f"{target.http}/ok"))
    future = [(k, b"99" if k == "trs-schema" else v) for k, v in schema_headers]
    not_json = f"POST / HTTP/1.1\r\nAuthorization: Bearer {canaries.new('not JSON')}\r\n".encode()
    return [
        record("bad scheme", bad_scheme, headers),
        record("CRLF", crlf, crlf_headers),
        record("line as name", line, line_headers),
        record("schema 99", schema, future),
        BadRecord("not JSON", not_json, [], answered=False),
    ]


def produce_records(bootstrap: str, topic: str, records: list[BadRecord]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)

    for record in records:
        producer.produce(topic, value=record.value, headers=record.headers, on_delivery=delivered)
    assert producer.flush(30) == 0
    assert not errors, errors


def dead_letters(bootstrap: str, source_topic: str, count: int) -> list[Message]:
    """The DLQ records of ``source_topic``, once there are ``count``."""

    def mine(messages: list[Message]) -> list[Message]:
        return [m for m in messages if header_value(m.headers(), HEADER_DLQ_TOPIC) == source_topic.encode()]

    return mine(read(bootstrap, DLQ_TOPIC, until=lambda m: len(mine(m)) >= count, timeout=60, partitions=3))


def client_errors(canaries: Canaries, bootstrap: str) -> dict[str, str]:
    """The text of every error a client gets from bad input that holds a credential."""
    task = Task(service_name="canary", request=HttpRequest(url="http://127.0.0.1/"))
    attempts: dict[str, Callable[[], object]] = {
        "a URL with another scheme": lambda: HttpRequest(url=canaries.url("bad scheme", "ftp://127.0.0.1/")),
        "a URL with white space": lambda: HttpRequest(url=canaries.url("space", "http://127.0.0.1/a b")),
        "a CRLF in a header": lambda: HttpRequest(
            url="http://127.0.0.1/", headers=[("Authorization", f"Bearer {canaries.new('CRLF')}\r\nX: 1")]
        ),
        "a header line as a name": lambda: HttpRequest(
            url="http://127.0.0.1/", headers=[(f"X-API-Key: {canaries.new('header line')}", "x")]
        ),
        "a task from JSON": lambda: Task.model_validate_json(
            json.dumps(
                {
                    "service_name": "canary",
                    "timeout": -1,
                    "request": {"url": canaries.url("JSON", "http://127.0.0.1/"), "headers": canaries.headers("JSON")},
                }
            )
        ),
        "an assignment": lambda: setattr(
            task,
            "request",
            {"url": canaries.url("assignment", "gopher://h/"), "headers": canaries.headers("assignment")},
        ),
        "a task file": lambda: parse_tasks(
            [json.dumps({"service_name": "canary", "request": {"url": canaries.url("task file", "ftp://h/")}})]
        ),
        "Kafka settings": lambda: KafkaSettings(sasl_password=canaries.new("SASL password"), security_protocol="TLS"),
        "a runner misused": lambda: TaskRunner(
            mode="remote",
            service_name="canary",
            kafka=KafkaSettings(bootstrap_servers=bootstrap, sasl_password=canaries.new("runner SASL password")),
            allowed_targets=["10.0.0.0/8"],
        ),
    }
    texts = {}
    for what, attempt in attempts.items():
        with pytest.raises((ValueError, TrsError)) as info:
            attempt()
        texts[f"the error from {what}"] = f"{info.value}\n{info.value!r}"
    return texts


def write_tasks(path: Path, tasks: list[Task]) -> Path:
    path.write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    return path


def trs_output(completed: subprocess.CompletedProcess[str], output: Path | None = None) -> str:
    return completed.stdout + completed.stderr + (output.read_text() if output is not None else "")


async def test_no_credential_reaches_logs_metrics_dead_letters_or_errors(
    kafka_bootstrap: str,
    admin: TopicAdmin,
    target: HttpTarget,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    canaries = Canaries()
    service = new_service(admin, partitions=2)
    captured: dict[str, str] = {}
    shown: list[object] = []

    with running_workers(
        kafka_bootstrap,
        tmp_path / "worker",
        group_id=f"canary-{uuid.uuid4().hex[:8]}",
        topics=[service.request_topic],
        log_level="DEBUG",
        allowed_targets=WORKER_ALLOWLIST,
    ) as (worker,):
        # Remote mode, in this process: every outcome, then a cancelled batch.
        async with TaskRunner(mode="remote", service_name=service.name, bootstrap_servers=kafka_bootstrap) as runner:
            remote = provoking_tasks(canaries, target, "remote")
            shown += [task for task, _ in remote.values()]
            shown += await run_and_check(runner, remote)
            slow = [canaries.task("cancelled", f"{target.http}/sleep?s=5", timeout=10) for _ in range(2)]
            batch = await runner.launch(slow)
            await runner.cancel(batch)
            cancelled = await batch.wait()
            assert {outcome_of(r) for r in cancelled} == {ErrorCode.CANCELLED}
            shown += [*slow, *cancelled]

        # Records the worker can't run: an expired task and one per way of failing validation.
        test_batch = await asyncio.to_thread(new_test_batch, admin, service.name)
        records = bad_records(canaries, test_batch, target)
        past = HandBatch(
            service.name, test_batch.batch_id, test_batch.reply_topic, datetime.now(UTC) - timedelta(seconds=1)
        )
        expired = past.envelope(f"{target.http}/ok", headers=canaries.headers("expired"))
        value, headers = encode_task(expired)
        records.append(BadRecord("expired", value, headers, answered=True))
        await asyncio.to_thread(produce_records, kafka_bootstrap, service.request_topic, records)
        answers = [r for r in records if r.answered]
        replies = await asyncio.to_thread(
            read, kafka_bootstrap, test_batch.reply_topic, until=lambda m: len(m) >= len(answers)
        )
        letters = await asyncio.to_thread(dead_letters, kafka_bootstrap, service.request_topic, len(records) - 1)

        # The trs command in both modes, with the same kinds of task, and with a bad task file.
        cli_tasks = [task for task, _ in provoking_tasks(canaries, target, "trs run").values()]
        for cli_mode in ("local", "remote"):
            # One batch runs under one service: in remote mode, the one its worker serves.
            mode_tasks = (
                cli_tasks
                if cli_mode == "local"
                else [task.model_copy(update={"service_name": service.name}) for task in cli_tasks]
            )
            tasks_file = write_tasks(tmp_path / f"{cli_mode}-tasks.jsonl", mode_tasks)
            output = tmp_path / f"{cli_mode}-results.jsonl"
            extra = ["--service", service.name, "--bootstrap-servers", kafka_bootstrap] if cli_mode == "remote" else []
            completed = await asyncio.to_thread(
                trs, "run", str(tasks_file), "--mode", cli_mode, "--output", str(output), *extra
            )
            # Some of the provoking tasks end in an error, by design.
            assert completed.returncode == ExitCode.TASK_ERROR, completed.stderr
            assert len(output.read_text().splitlines()) == len(cli_tasks)
            captured[f"`trs run --mode {cli_mode}` output"] = trs_output(completed, output)
        bad_file = tmp_path / "bad.jsonl"
        bad_file.write_text(
            json.dumps({"service_name": "canary", "request": {"url": canaries.url("bad file", "ftp://h/")}})
        )
        completed = await asyncio.to_thread(trs, "run", str(bad_file))
        assert completed.returncode == 1
        assert "request.url: URL scheme must be http or https, got 'ftp'" in completed.stderr
        captured["`trs run` of a bad task file"] = trs_output(completed)

        captured["the worker's /metrics"] = worker.get("/metrics")[1]

    # Local mode, in this process, on each transport, with the worker's allowlist.
    for name in ("pyreqwest", "httpx"):
        async with TaskRunner(
            mode="local", service_name="canary", transport=name, allowed_targets=[WORKER_ALLOWLIST]
        ) as runner:
            local = provoking_tasks(canaries, target, f"local {name}")
            shown += [task for task, _ in local.values()]
            shown += await run_and_check(runner, local)

    worker_log = worker.log_path.read_text(errors="replace")
    # The search covers what matters only if the run went through the paths that log.
    assert "attempt failed" in worker_log
    assert f"to {DLQ_TOPIC}" in worker_log
    results = [json.loads(_value(m)) for m in replies]
    assert sorted(r["result"]["error"]["code"] for r in results) == ["expired"] + ["invalid_task"] * (len(answers) - 1)
    assert sorted(_value(m) for m in letters) == sorted(r.value for r in records if r.what != "expired")
    assert all(header_value(m.headers(), HEADER_DLQ_REASON) for m in letters)

    out, err = capfd.readouterr()
    captured |= {
        "the worker's log": worker_log,
        "this client's logs": caplog.text,
        "this client's stdout": out,
        "this client's stderr": err,
        "this client's metrics": generate_latest().decode(),
        "the results of the bad records": "\n".join(_value(m).decode() for m in replies),
        "reprs of tasks and results": "\n".join(map(repr, shown)),
        "reprs of settings": repr(KafkaSettings(sasl_password=canaries.new("settings SASL password"))),
        **{f"the headers of the dead letter of {_source(m, records)}": repr(m.headers()) for m in letters},
        **client_errors(canaries, kafka_bootstrap),
    }
    leaks = canaries.found_in(captured)
    assert not leaks, "credentials found:\n" + "\n".join(leaks)
    # The same search does find the credentials where they belong: in the tasks a dead letter keeps.
    assert canaries.found_in({"dead letter values": "\n".join(_value(m).decode(errors="replace") for m in letters)})


def _value(message: Message) -> bytes:
    return message.value() or b""


def _source(letter: Message, records: list[BadRecord]) -> str:
    return next(r.what for r in records if r.value == letter.value())


async def test_a_failed_sasl_login_shows_its_password_nowhere(
    kafka_bootstrap: str, admin: TopicAdmin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = f"cnry{uuid.uuid4().hex}"
    sasl = {
        "TRS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "TRS_KAFKA_SASL_MECHANISM": "PLAIN",
        "TRS_KAFKA_SASL_USERNAME": "trs",
        "TRS_KAFKA_SASL_PASSWORD": password,
    }
    service = new_service(admin, partitions=1)

    # The test broker takes no SASL login: both the worker and trs fail to reach it.
    completed = await asyncio.to_thread(
        trs, "topics", "init", env={"TRS_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, **sasl}
    )
    for name, value in sasl.items():
        monkeypatch.setenv(name, value)
    worker = WorkerProcess(
        kafka_bootstrap, tmp_path / "worker.log", group_id="sasl", topics=[service.request_topic], log_level="DEBUG"
    )
    try:
        await asyncio.to_thread(
            wait_until, lambda: "handshake failed" in worker.log(), 30, "the worker's failed SASL handshake"
        )
    finally:
        if worker.process.poll() is None:
            worker.terminate(30)
        worker.close()

    assert completed.returncode == 1
    assert "Error:" in completed.stderr
    log = worker.log_path.read_text(errors="replace")
    for where, text in {"trs topics init": trs_output(completed), "the worker's log": log}.items():
        assert password not in text, where

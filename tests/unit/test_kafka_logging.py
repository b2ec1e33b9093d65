"""librdkafka's lines go through Python logging, WARNING and above, with repeats folded.

The folding is tested on records built as confluent-kafka builds them, with a clock the test moves.
The wiring is tested with real clients against a loopback port where nothing listens: no broker,
so librdkafka retries the connection again and again.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from consumer.kafka_config import consumer_config, control_config, producer_config
from consumer.logs import configure_logging
from consumer.settings import WorkerSettings
from producer.remote import reply_consumer_config
from shared.kafka_logging import (
    FOLD_INTERVAL,
    LIBRDKAFKA_LOGGER,
    RepeatFolder,
    kafka_logger,
    message_shape,
    with_kafka_logging,
)
from shared.settings import KafkaSettings
from tests.waiting import wait_until

REFUSED = (
    "[thrd:127.0.0.1:{port}/bootstrap]: 127.0.0.1:{port}/bootstrap: "
    "Connect to ipv4#127.0.0.1:{port} failed: Connection refused (after {ms}ms in state CONNECT{note})"
)


def librdkafka_record(message: str, facility: str = "FAIL", client: str = "trs#producer-1") -> logging.LogRecord:
    """A record as confluent-kafka makes one: ``logger.log(level, "%s [%s] %s", facility, client, message)``."""
    return logging.LogRecord(
        LIBRDKAFKA_LOGGER, logging.ERROR, __file__, 0, "%s [%s] %s", (facility, client, message), None
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_line_passes_and_its_repeats_are_held_back() -> None:
    clock = Clock()
    folder = RepeatFolder(clock=clock)

    passed = [folder.filter(librdkafka_record(REFUSED.format(port=9092, ms=n, note=""))) for n in range(20)]

    assert passed == [True] + [False] * 19


def test_after_the_interval_one_line_passes_with_the_count_held_back() -> None:
    clock = Clock()
    folder = RepeatFolder(clock=clock)
    folder.filter(librdkafka_record(REFUSED.format(port=9092, ms=0, note="")))
    for _ in range(7):
        clock.now += 1
        folder.filter(librdkafka_record(REFUSED.format(port=9092, ms=0, note="")))

    clock.now += FOLD_INTERVAL
    record = librdkafka_record(REFUSED.format(port=9092, ms=3, note=", 7 identical error(s) suppressed"))

    assert folder.filter(record)
    assert record.getMessage().endswith("(7 more like this in the last 67 s)")
    assert record.__dict__["repeats"] == 7
    assert not folder.filter(librdkafka_record(REFUSED.format(port=9092, ms=0, note="")))


def test_a_line_with_nothing_held_back_passes_unchanged() -> None:
    clock = Clock()
    folder = RepeatFolder(clock=clock)
    folder.filter(librdkafka_record(REFUSED.format(port=9092, ms=0, note="")))
    clock.now += FOLD_INTERVAL
    record = librdkafka_record(REFUSED.format(port=9092, ms=0, note=""))

    assert folder.filter(record)
    assert record.getMessage() == f"FAIL [trs#producer-1] {REFUSED.format(port=9092, ms=0, note='')}"
    assert not hasattr(record, "repeats")


def test_the_same_failure_seen_by_several_clients_folds_into_one() -> None:
    folder = RepeatFolder(clock=Clock())
    line = REFUSED.format(port=9092, ms=0, note="")

    assert folder.filter(librdkafka_record(line, client="trs#producer-1"))
    assert not folder.filter(librdkafka_record(line, client="trs#consumer-2"))


def test_one_refused_broker_seen_by_its_bootstrap_node_and_coordinator_handles_folds_into_one() -> None:
    folder = RepeatFolder(clock=Clock())
    failure = "Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)"

    assert folder.filter(librdkafka_record(f"[thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap: {failure}"))
    assert not folder.filter(librdkafka_record(f"[thrd:127.0.0.1:9092/111]: 127.0.0.1:9092/111: {failure}"))
    assert not folder.filter(librdkafka_record(f"[thrd:GroupCoordinator]: GroupCoordinator: 127.0.0.1:9092: {failure}"))


def test_lines_about_different_brokers_or_facilities_are_not_folded_together() -> None:
    folder = RepeatFolder(clock=Clock())

    assert folder.filter(librdkafka_record(REFUSED.format(port=9092, ms=0, note="")))
    assert folder.filter(librdkafka_record(REFUSED.format(port=9093, ms=0, note="")))
    assert folder.filter(librdkafka_record(REFUSED.format(port=9092, ms=0, note=""), facility="ERROR"))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (
            "[thrd:kafka-0:9092/0]: kafka-0:9092/0: Disconnected (after 12034ms in state UP)",
            "[thrd:kafka-0:9092/0]: kafka-0:9092/0: Disconnected (after 5ms in state UP)",
        ),
        ("1/3 brokers are down", "2/3 brokers are down"),
        (
            "Timed out 4 in-flight, 0 retry-queued, 0 out-queue, 0 partially-sent requests",
            "Timed out 1 in-flight, 2 retry-queued, 0 out-queue, 0 partially-sent requests",
        ),
    ],
)
def test_counts_and_durations_do_not_make_a_new_shape(one: str, other: str) -> None:
    assert message_shape(one) == message_shape(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Connect to ipv4#10.0.0.1:9092 failed", "Connect to ipv4#10.0.0.2:9092 failed"),
        ("Connect to ipv4#10.0.0.1:9092 failed", "Connect to ipv4#10.0.0.1:9093 failed"),
        ("Failed to resolve 'kafka-0:9092'", "Failed to resolve 'kafka-1:9092'"),
        ("Connect to ipv6#[::1]:9092 failed", "Connect to ipv6#[::1]:9093 failed"),
    ],
)
def test_addresses_are_part_of_the_shape(one: str, other: str) -> None:
    assert message_shape(one) != message_shape(other)


def test_a_client_config_gets_the_logger_and_the_warning_level() -> None:
    config = with_kafka_logging({"bootstrap.servers": "k:9092"})

    assert config["logger"] is kafka_logger()
    assert config["log_level"] == 4
    assert config["bootstrap.servers"] == "k:9092"
    assert with_kafka_logging({"log_level": 7})["log_level"] == 7


def test_the_folder_is_installed_once() -> None:
    kafka_logger()
    kafka_logger()

    assert sum(isinstance(f, RepeatFolder) for f in logging.getLogger(LIBRDKAFKA_LOGGER).filters) == 1


@pytest.mark.parametrize(
    "build",
    [
        lambda kafka: consumer_config(kafka, WorkerSettings()),
        lambda kafka: control_config(kafka, WorkerSettings()),
        lambda kafka: producer_config(kafka, WorkerSettings()),
        reply_consumer_config,
    ],
    ids=["worker-group-consumer", "worker-control-consumer", "worker-producer", "client-reply-reader"],
)
def test_every_config_builder_routes_librdkafka_through_the_logger(build: Callable[[KafkaSettings], Any]) -> None:
    config = build(KafkaSettings(bootstrap_servers="k:9092"))

    assert config["logger"] is kafka_logger()
    assert config["log_level"] == 4


# With real clients ----------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection to it is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def json_logging() -> Iterator[io.StringIO]:
    """The worker's logging, as ``trs-worker`` sets it up, into a buffer; undone afterwards."""
    root, kafka = logging.getLogger(), logging.getLogger(LIBRDKAFKA_LOGGER)
    saved = root.handlers[:], root.level, kafka.level
    configure_logging(fmt="json", level="INFO")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    root.handlers[:], level, kafka_level = saved
    root.setLevel(level)
    kafka.setLevel(kafka_level)


class Arrivals(logging.Filter):
    """Counts the records librdkafka hands over before they are folded; lets every one through."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self._needle = needle
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += self._needle in record.getMessage()
        return True


@pytest.fixture
def refusals() -> Iterator[Arrivals]:
    """The count of "Connection refused" lines librdkafka logs, taken ahead of the folding."""
    logger = kafka_logger()
    arrivals = Arrivals("Connection refused")
    logger.filters.insert(0, arrivals)
    yield arrivals
    logger.removeFilter(arrivals)


def poll_until_refused(poll: Callable[[], object], refusals: Arrivals, times: int = 5) -> None:
    """Serve the client (its log lines come through its polls) until librdkafka was refused ``times`` times."""

    def refused() -> bool:
        poll()
        return refusals.count >= times

    wait_until(refused, what=f"{times} refused connections")


def librdkafka_json_lines(logged: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in logged.splitlines()]
    return [line for line in lines if line["logger"] == LIBRDKAFKA_LOGGER]


def assert_one_json_line_per_refusal(logged: str, stderr: str, port: int) -> None:
    assert "%3|" not in stderr
    lines = librdkafka_json_lines(logged)
    refused = [line for line in lines if "Connection refused" in line["message"]]
    assert len(refused) == 1, lines
    assert refused[0]["level"] == "ERROR"
    assert f"Connect to ipv4#127.0.0.1:{port} failed" in refused[0]["message"]
    assert all(line["level"] in ("WARNING", "ERROR", "CRITICAL") for line in lines)


def test_the_worker_consumer_logs_a_refused_broker_once_as_json(
    capfd: pytest.CaptureFixture[str], closed_port: int, refusals: Arrivals, json_logging: io.StringIO
) -> None:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port}")
    consumer = Consumer(consumer_config(kafka, WorkerSettings()))
    try:
        consumer.subscribe(["trs-a-http-v1-send"])
        poll_until_refused(lambda: consumer.consume(1, 0.05), refusals)
    finally:
        consumer.close()

    assert_one_json_line_per_refusal(json_logging.getvalue(), capfd.readouterr().err, closed_port)


def test_the_worker_producer_logs_a_refused_broker_once_as_json(
    capfd: pytest.CaptureFixture[str], closed_port: int, refusals: Arrivals, json_logging: io.StringIO
) -> None:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port}")
    producer = Producer(producer_config(kafka, WorkerSettings()))
    # A message to deliver is what makes a producer keep reconnecting.
    producer.produce("trs-a-http-v1-rcv-x", b"result")
    poll_until_refused(lambda: producer.poll(0.05), refusals)
    producer.purge()
    producer.flush(0)

    assert_one_json_line_per_refusal(json_logging.getvalue(), capfd.readouterr().err, closed_port)

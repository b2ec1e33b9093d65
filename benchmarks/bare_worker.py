"""A worker with no TRS code: the floor of what draining a request topic costs a Python process.

``benchmarks.worker_throughput`` runs it as its ``bare`` run, beside ``trs-worker``, to say how much of the
worker's CPU per task is TRS's own. It does what a task's contract requires and nothing more, the way one
would write it quickly:

- a thread of its own consumes the request topic in a consumer group, with the worker's consumer properties,
  in batches of at most the room left in a backlog of ``--concurrency`` records (taken again once half of it
  is free, as the worker does), and hands each batch to the event loop;
- ``--concurrency`` coroutines take records one at a time: each decodes the task's JSON (only the fields a GET
  needs), runs one GET through one shared pyreqwest client (streamed, the body read up to a size cap, a
  per-request timeout, status, headers and body kept) and produces one result record, the same bytes as the
  worker's (``encode_result``), to the task's reply topic;
- the event loop serves the producer's delivery reports every few milliseconds; an acknowledged result marks
  its record done, and every ``COMMIT_INTERVAL`` each partition is committed up to its lowest offset not done;
- ``/readyz`` on ``--port`` answers 200 once the group has assigned partitions, and SIGTERM stops fetching, lets
  the records taken finish, flushes the producer, commits and leaves the group.

TRS's wire constants and defaults are written out here rather than imported, so no TRS module (nor pydantic)
is loaded in this process; ``tests/unit/test_bare_worker.py`` checks that they match.

    python -m benchmarks.bare_worker --bootstrap-servers 127.0.0.1:9092 --group-id g --topic t --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pyreqwest.exceptions as pyreqwest_errors
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from pyreqwest.client import ClientBuilder

from benchmarks.bare_clients import BodyTooLarge, read_capped, run_on_loop

log = logging.getLogger("bare_worker")

#: The worker's defaults (``consumer.settings.WorkerSettings``) and the engine's body cap.
FETCH_WAIT_MAX_MS = 10
LINGER_MS = 3
CONSUME_BATCH = 500
COMMIT_INTERVAL = 0.5
MAX_BODY_BYTES = 700_000
#: What ``shared.wire`` writes in every result record's headers besides the batch and task ids.
FIXED_HEADERS: list[tuple[str, str | bytes | None]] = [("trs-schema", b"1"), ("content-type", b"application/json")]
BATCH_ID_HEADER = "trs-batch-id"
TASK_ID_HEADER = "trs-task-id"
#: The error codes this worker can end a task with, and their fixed messages (``shared.errors``).
ERROR_MESSAGES = {
    "timeout": "the task's deadline passed before a response arrived",
    "connect_error": "could not connect to the target",
    "response_too_large": "the response body exceeded the size limit",
    "internal": "an internal error occurred",
}
#: Seconds between servings of delivery reports while results are unacknowledged, and while none are.
DELIVERY_INTERVAL = 0.005
DELIVERY_IDLE_INTERVAL = 0.1
#: Most seconds one consume call blocks, so the thread notices a stop.
POLL_TIMEOUT = 0.1
#: Seconds the records taken get to finish after SIGTERM, and the producer to flush.
GRACE = 25.0
#: Seconds a produce waits when the producer's queue is full.
QUEUE_FULL_BACKOFF = 0.005

Key = tuple[str, int]


def consumer_config(bootstrap: str, group_id: str, session_timeout_ms: int) -> dict[str, Any]:
    """The worker's group-consumer properties (``consumer.kafka_config.consumer_config``) that matter here."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(100, session_timeout_ms // 10),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        "allow.auto.create.topics": False,
    }


def producer_config(bootstrap: str) -> dict[str, Any]:
    """The worker's result-producer properties (``consumer.kafka_config.producer_config``)."""
    return {
        "bootstrap.servers": bootstrap,
        "allow.auto.create.topics": False,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": LINGER_MS,
        "compression.type": "lz4",
    }


#: Compact and not ASCII-escaped, as pydantic writes. One encoder for the process: ``json.dumps`` with options
#: builds one per call, a third of its time here.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _dumps(value: object) -> bytes:
    return _encode_json(value).encode()


def encode_result(
    batch_id: str,
    task_id: str,
    worker: str,
    elapsed: float,
    response: tuple[int, list[tuple[str, str]], bytes] | None,
    error: str | None = None,
) -> tuple[bytes, list[tuple[str, str | bytes | None]]]:
    """A result record's value and headers, as ``shared.wire.encode_result_of`` writes them: a response, or the
    ``error`` code when ``response`` is ``None``."""
    outcome: dict[str, Any] = {"task_id": task_id, "response": None, "error": None}
    if response is not None:
        status, headers, body = response
        outcome["response"] = {"status_code": status, "headers": headers, "body": base64.b64encode(body).decode()}
    else:
        assert error is not None
        outcome["error"] = {"code": error, "message": ERROR_MESSAGES[error], "status_code": None}
    outcome.update(attempts=1, elapsed=elapsed, labels={})
    value = _dumps({"schema_version": 1, "batch_id": batch_id, "result": outcome, "worker": worker})
    return value, [*FIXED_HEADERS, (BATCH_ID_HEADER, batch_id.encode()), (TASK_ID_HEADER, task_id.encode())]


class Offsets:
    """Per partition, the offsets handed to the event loop and not yet done, and the next offset to commit.

    Used on the event loop only.
    """

    def __init__(self) -> None:
        self._pending: dict[Key, set[int]] = {}
        #: One past the highest offset handed over.
        self._next: dict[Key, int] = {}
        self._committed: dict[Key, int] = {}

    def add(self, key: Key, offset: int) -> None:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = set()
        pending.add(offset)
        if offset >= self._next.get(key, 0):
            self._next[key] = offset + 1

    def done(self, key: Key, offset: int) -> None:
        pending = self._pending.get(key)
        # A revoked partition's records may still finish; nothing is committed for it any more.
        if pending is not None:
            pending.discard(offset)

    def forget(self, keys: list[Key]) -> None:
        for key in keys:
            self._pending.pop(key, None)
            self._next.pop(key, None)
            self._committed.pop(key, None)

    def due(self) -> list[TopicPartition]:
        """Each partition's offset to commit, where it moved: its lowest offset not done, else one past its last."""
        due = []
        for key, pending in self._pending.items():
            offset = min(pending) if pending else self._next[key]
            if offset != self._committed.get(key):
                self._committed[key] = offset
                due.append(TopicPartition(key[0], key[1], offset))
        return due


class Fetcher:
    """The thread that owns the consumer: it consumes batches while the backlog has room and sends the commits."""

    def __init__(self, config: dict[str, Any], topic: str, max_backlog: int, loop: asyncio.AbstractEventLoop) -> None:
        self.consumer = Consumer(config)
        self.max_backlog = max_backlog
        #: The fetcher takes records again once the backlog is down to this.
        self.low_water = max_backlog - max(1, max_backlog // 2)
        #: Records handed to the loop (written by this thread) and taken by a runner (written by the loop).
        self.handed = 0
        self.taken = 0
        self.room = threading.Event()
        self.assigned = False
        self.commits: queue.SimpleQueue[list[TopicPartition]] = queue.SimpleQueue()
        self.on_records: Callable[[list[Message]], object] = lambda _: None
        self.on_revoked: Callable[[list[Key]], object] = lambda _: None
        self._loop = loop
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="bare-fetcher", daemon=True)
        self.consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        self.room.set()
        await asyncio.to_thread(self._thread.join)

    def _assigned(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        # confluent-kafka assigns the partitions itself once this returns.
        if partitions:
            self.assigned = True

    def _revoked(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._loop.call_soon_threadsafe(self.on_revoked, keys)

    def _main(self) -> None:
        consumer = self.consumer
        while not self._stopping.is_set():
            with contextlib.suppress(queue.Empty):
                while True:
                    consumer.commit(offsets=self.commits.get_nowait(), asynchronous=True)
            if self.handed - self.taken > self.low_water:
                # Cleared before the backlog is read again: a runner's set() in between is not lost.
                self.room.clear()
                if self.handed - self.taken > self.low_water:
                    self.room.wait(POLL_TIMEOUT)
                continue
            limit = min(self.max_backlog - (self.handed - self.taken), CONSUME_BATCH)
            # Block for the first message only: consume(n, timeout) waits out the timeout for a partial batch.
            messages = consumer.consume(num_messages=1, timeout=POLL_TIMEOUT)
            if messages and limit > 1:
                messages += consumer.consume(num_messages=limit - 1, timeout=0)
            records = [m for m in messages if m.error() is None]
            for message in messages:
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", error)
            if records:
                self.handed += len(records)
                self._loop.call_soon_threadsafe(self.on_records, records)


Fetch = Callable[[str, float], Awaitable[tuple[int, list[tuple[str, str]], bytes]]]


@contextlib.asynccontextmanager
async def _http(concurrency: int) -> AsyncIterator[Fetch]:
    """One pyreqwest client, and a GET that keeps status, headers and body, read up to ``MAX_BODY_BYTES``."""
    async with ClientBuilder().max_connections(concurrency).tcp_nodelay(True).build() as client:

        async def fetch(url: str, timeout: float) -> tuple[int, list[tuple[str, str]], bytes]:
            async with client.get(url).timeout(timedelta(seconds=timeout)).build_streamed() as response:
                body = await read_capped(response, MAX_BODY_BYTES)
                return response.status, list(response.headers.items()), body

        yield fetch


def _error_code(exc: Exception) -> str:
    if isinstance(exc, BodyTooLarge):
        return "response_too_large"
    if isinstance(exc, pyreqwest_errors.RequestTimeoutError | pyreqwest_errors.ConnectTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, pyreqwest_errors.ConnectError):
        return "connect_error"
    log.warning("a request failed: %r", exc)
    return "internal"


class BareWorker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.offsets = Offsets()
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self.producer = Producer(producer_config(args.bootstrap_servers))

    async def run(self) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        config = consumer_config(args.bootstrap_servers, args.group_id, args.session_timeout_ms)
        fetcher = Fetcher(config, args.topic, args.concurrency, loop)
        fetcher.on_records = self._enqueue
        fetcher.on_revoked = self.offsets.forget
        self.fetcher = fetcher
        server = await asyncio.start_server(self._readyz, "127.0.0.1", args.port)
        async with _http(args.concurrency) as fetch:
            runners = [asyncio.create_task(self._runner(fetch)) for _ in range(args.concurrency)]
            background = [asyncio.create_task(self._serve_deliveries()), asyncio.create_task(self._commit_often())]
            fetcher.start()
            await stop.wait()
            await fetcher.stop()
            # Records never taken are never done: the next owner of their partition runs them.
            while not self.queue.empty():
                self.queue.get_nowait()
            for _ in runners:
                self.queue.put_nowait(None)
            _, late = await asyncio.wait(runners, timeout=GRACE)
            for runner in late:
                runner.cancel()
            for task in background:
                task.cancel()
            # Serves the last delivery reports on this thread, so their records are done before the last commit.
            self.producer.flush(GRACE)
        server.close()
        due = self.offsets.due()
        if due:
            fetcher.consumer.commit(offsets=due, asynchronous=False)
        fetcher.consumer.close()

    def _enqueue(self, records: list[Message]) -> None:
        add, put = self.offsets.add, self.queue.put_nowait
        for message in records:
            add((message.topic() or "", message.partition() or 0), message.offset() or 0)
            put(message)

    async def _runner(self, fetch: Fetch) -> None:
        fetcher = self.fetcher
        while (message := await self.queue.get()) is not None:
            fetcher.taken += 1
            if fetcher.handed - fetcher.taken == fetcher.low_water:
                fetcher.room.set()
            try:
                await self._run(message, fetch)
            except Exception:
                log.exception("a record failed")

    async def _run(self, message: Message, fetch: Fetch) -> None:
        key, offset = (message.topic() or "", message.partition() or 0), message.offset() or 0
        started = time.monotonic()
        try:
            envelope = json.loads(message.value() or b"")
            task = envelope["task"]
            task_id, url, timeout = task["id"], task["request"]["url"], float(task["timeout"])
            batch_id, reply_topic = envelope["batch_id"], envelope["reply_topic"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("not a task at %s[%d]@%d: %r", key[0], key[1], offset, exc)
            self.offsets.done(key, offset)
            return
        try:
            response = await fetch(url, timeout)
        except Exception as exc:
            value, headers = encode_result(
                batch_id, task_id, self.name, time.monotonic() - started, None, _error_code(exc)
            )
        else:
            value, headers = encode_result(batch_id, task_id, self.name, time.monotonic() - started, response)
        on_delivery = partial(self._delivered, key, offset)
        while True:
            try:
                self.producer.produce(
                    reply_topic, value=value, key=task_id.encode(), headers=headers, on_delivery=on_delivery
                )
                return
            except BufferError:
                await asyncio.sleep(QUEUE_FULL_BACKOFF)

    def _delivered(self, key: Key, offset: int, error: KafkaError | None, _: Message) -> None:
        if error is None:
            self.offsets.done(key, offset)
        else:
            # Left not done: its partition's commits stop there, and the task runs again after a restart.
            log.error("a result was not delivered: %s", error)

    async def _serve_deliveries(self) -> None:
        producer = self.producer
        while True:
            producer.poll(0)
            await asyncio.sleep(DELIVERY_INTERVAL if len(producer) else DELIVERY_IDLE_INTERVAL)

    async def _commit_often(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            due = self.offsets.due()
            if due:
                self.fetcher.commits.put(due)

    async def _readyz(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            status = b"200 OK" if self.fetcher.assigned else b"503 Service Unavailable"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A worker with no TRS code, for the floor of the worker's CPU.")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--group-id", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--port", type=int, required=True, help="where /readyz is served, on 127.0.0.1")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight, and the backlog's size")
    parser.add_argument("--session-timeout-ms", type=int, default=45_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_on_loop(lambda: BareWorker(args).run())


if __name__ == "__main__":
    main()

"""HTTP targets on loopback that misbehave on purpose, for the reliability suite.

A small HTTP/1.1 server on asyncio streams, written by hand so that it can break the protocol in
ways a framework wouldn't let it. It runs in a child process, so that a trickling or silent
target never competes for the interpreter lock with the client under test; the tests read what it
saw from ``GET /state``. Routes, each counted per ``?key=`` (the tests use a task's id):

    /flaky?p=P            503 with probability P, else 200; the statuses served are kept per key
    /latency?max=S        waits a random 0 to S seconds, then 200; when it answers (or would have,
                          had the client waited) is kept per key, in seconds since the epoch
    /reset                headers and half the body, then a TCP reset
    /slowloris?every=S    the status line and headers, one byte every S seconds, never finished
    /silent               reads the request and never answers
    /redirect             302 to itself
    /big?n=N[&chunked=1]  a body of N bytes, with a Content-Length or chunked
    /state                what it saw, as JSON: hits per route and per key, open requests per route,
                          the statuses /flaky served and when /latency answers, per key

``open`` counts the requests of each route that were received and are neither answered nor hung
up on by the client: once every task has its outcome it must come back to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from producer.dev.embedded_broker import free_port, with_parent_death_signal
from tests.http_target import serving

__all__ = ["FaultyTargets", "faulty_targets"]
#: Longest request head read, in bytes.
MAX_HEAD = 64 * 1024
#: The body /reset promises, of which it sends half.
RESET_BODY = 10_000

_Handler = Callable[["_Exchange"], Awaitable[bool]]


class _Exchange:
    """One request on a connection: what was asked and the streams to answer on."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str) -> None:
        self.reader = reader
        self.writer = writer
        url = urlsplit(target)
        self.route = url.path.strip("/").split("/")[0]
        self.query = {name: values[-1] for name, values in parse_qs(url.query).items()}
        self.key = self.query.get("key", "")
        self.target = target

    async def answer(self, status: int, reason: str, body: bytes = b"", headers: tuple[str, ...] = ()) -> None:
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", *headers]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def hung_up(self, within: float | None = None) -> bool:
        """Whether the client closed the connection (within ``within`` seconds, or ever)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while await self.reader.read(4096):
                    pass
                return True
        return False


class _Server:
    """The server's side: the routes and what they saw."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._hits: Counter[str] = Counter()
        self._key_hits: Counter[str] = Counter()
        self._open: Counter[str] = Counter()
        self._served: dict[str, list[int]] = {}
        self._answers: dict[str, list[float]] = {}
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._handlers: dict[str, _Handler] = {
            "flaky": self._flaky,
            "latency": self._latency,
            "reset": self._reset,
            "slowloris": self._slowloris,
            "silent": self._silent,
            "redirect": self._redirect,
            "big": self._big,
        }

    async def serve(self, port: int) -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        server = await asyncio.start_server(self._connection, "127.0.0.1", port, backlog=1024)
        async with server:
            await stop.wait()
            # Aborted, so that each handler ends by itself: asyncio's streams report a cancelled one as an error.
            for writer in self._connections.values():
                writer.transport.abort()
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self._connections.pop(task, None)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; whether the connection may carry another."""
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            return False
        lines = head.decode("latin-1").split("\r\n")
        _, target, _ = lines[0].split(" ", 2)
        lengths = [line.split(":", 1)[1] for line in lines[1:] if line.lower().startswith("content-length:")]
        if lengths and int(lengths[0]):
            await reader.readexactly(int(lengths[0]))
        exchange = _Exchange(reader, writer, target)
        if exchange.route == "state":
            await exchange.answer(200, "OK", json.dumps(self._state()).encode())
            return True
        handler = self._handlers.get(exchange.route)
        if handler is None:
            await exchange.answer(404, "Not Found")
            return True
        self._hits[exchange.route] += 1
        self._key_hits[exchange.key] += 1
        self._open[exchange.route] += 1
        try:
            return await handler(exchange)
        finally:
            self._open[exchange.route] -= 1

    def _state(self) -> dict[str, object]:
        return {
            "hits": self._hits,
            "key_hits": self._key_hits,
            "open": self._open,
            "served": self._served,
            "answers": self._answers,
        }

    # The routes -------------------------------------------------------------------------------

    async def _flaky(self, exchange: _Exchange) -> bool:
        status = 503 if self._rng.random() < float(exchange.query.get("p", "0.3")) else 200
        self._served.setdefault(exchange.key, []).append(status)
        await exchange.answer(status, "Service Unavailable" if status == 503 else "OK", b"flaky")
        return True

    async def _latency(self, exchange: _Exchange) -> bool:
        wait = self._rng.uniform(0, float(exchange.query.get("max", "3")))
        self._answers.setdefault(exchange.key, []).append(time.time() + wait)
        if await exchange.hung_up(within=wait):
            return False
        await exchange.answer(200, "OK", b"late")
        return True

    async def _reset(self, exchange: _Exchange) -> bool:
        exchange.writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {RESET_BODY}\r\n\r\n".encode())
        exchange.writer.write(b"x" * (RESET_BODY // 2))
        await exchange.writer.drain()
        # SO_LINGER with a zero timeout makes the close a reset (RST) rather than an orderly FIN.
        sock = exchange.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        exchange.writer.transport.abort()
        return False

    async def _slowloris(self, exchange: _Exchange) -> bool:
        every = float(exchange.query.get("every", "0.1"))
        trickle = b"HTTP/1.1 200 OK\r\nX-Trickle: " + b"z" * 1_000_000
        for byte in trickle:
            if await exchange.hung_up(within=every):
                break
            exchange.writer.write(bytes([byte]))
        return False

    async def _silent(self, exchange: _Exchange) -> bool:
        await exchange.hung_up()
        return False

    async def _redirect(self, exchange: _Exchange) -> bool:
        await exchange.answer(302, "Found", headers=(f"Location: {exchange.target}",))
        return True

    async def _big(self, exchange: _Exchange) -> bool:
        size = int(exchange.query["n"])
        chunk = b"x" * 65536
        if exchange.query.get("chunked") != "1":
            exchange.writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            for start in range(0, size, len(chunk)):
                exchange.writer.write(chunk[: size - start])
                await exchange.writer.drain()
            return True
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, size, len(chunk)):
            piece = chunk[: size - start]
            exchange.writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await exchange.writer.drain()
        exchange.writer.write(b"0\r\n\r\n")
        await exchange.writer.drain()
        return True


class FaultyTargets:
    """The running server as the tests see it: its base URL and what it saw."""

    def __init__(self, url: str) -> None:
        self.url = url

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/state", timeout=5) as response:
            state: dict[str, Any] = json.load(response)
            return state

    def key_hits(self) -> dict[str, int]:
        """How many requests each key got."""
        hits: dict[str, int] = self.state()["key_hits"]
        return hits

    def open(self, route: str) -> int:
        """The requests of ``route`` received and neither answered nor hung up on."""
        return int(self.state()["open"].get(route, 0))


@contextlib.contextmanager
def faulty_targets(seed: int = 0) -> Iterator[FaultyTargets]:
    """Serve the routes from a child process on a free loopback port until the block ends."""
    port = free_port()
    command = [sys.executable, "-m", "tests.faulty_targets", str(port), str(seed)]
    process = subprocess.Popen(with_parent_death_signal(command), cwd=Path(__file__).resolve().parents[1])
    targets = FaultyTargets(f"http://127.0.0.1:{port}")
    with serving(process, targets.state, "the faulty targets"):
        yield targets


if __name__ == "__main__":
    asyncio.run(_Server(int(sys.argv[2])).serve(int(sys.argv[1])))

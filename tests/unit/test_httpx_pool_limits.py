"""How the httpx transport maps a transport policy onto httpx's pool, and that its pool keeps to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from shared.engine.httpx_transport import HTTPX_MAX_IDLE_SECONDS, HttpxTransport, pool_limits
from shared.engine.transport import TlsConfig
from shared.models import HttpRequest, TransportPolicy


def test_the_default_idle_timeout_is_cut_to_httpx_own_keepalive_expiry() -> None:
    limits = pool_limits(TransportPolicy())

    assert TransportPolicy().idle_timeout == 90.0
    assert limits.keepalive_expiry == HTTPX_MAX_IDLE_SECONDS == 5.0


def test_an_idle_timeout_under_the_cap_is_kept() -> None:
    assert pool_limits(TransportPolicy(idle_timeout=2.5)).keepalive_expiry == 2.5


def test_no_idle_timeout_means_httpx_own_keepalive_expiry() -> None:
    assert pool_limits(TransportPolicy(idle_timeout=None)).keepalive_expiry == HTTPX_MAX_IDLE_SECONDS


def test_connection_limits_follow_the_policy() -> None:
    unbounded = pool_limits(TransportPolicy())
    bounded = pool_limits(TransportPolicy(max_connections=50))
    no_keep_alive = pool_limits(TransportPolicy(max_connections=50, keep_alive=False))

    assert (unbounded.max_connections, unbounded.max_keepalive_connections) == (None, 1000)
    assert (bounded.max_connections, bounded.max_keepalive_connections) == (50, 50)
    assert (no_keep_alive.max_connections, no_keep_alive.max_keepalive_connections) == (50, 0)


class ConnectionCountingServer:
    """An HTTP/1.1 keep-alive server on loopback that answers every request with 200 and counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[ConnectionCountingServer]:
    counting = ConnectionCountingServer()
    listener = await asyncio.start_server(counting._serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    counting.url = f"http://127.0.0.1:{port}/"
    async with listener:
        yield counting


async def _get(transport: HttpxTransport, url: str) -> int:
    response = await transport.send(HttpRequest(url=url), user_agent=None, max_body_bytes=1000, timeout=5.0)
    return response.status_code


async def test_a_connection_is_reused_until_it_has_been_idle_for_the_idle_timeout(
    server: ConnectionCountingServer,
) -> None:
    idle_timeout = 1.0
    async with HttpxTransport(TransportPolicy(idle_timeout=idle_timeout), TlsConfig()) as transport:
        assert await _get(transport, server.url) == 200
        assert await _get(transport, server.url) == 200
        idle_since = time.monotonic()
        assert server.connections == 1

        # The connection's expiry was set when the last response closed, before ``idle_since``; the pool drops an
        # expired connection when the next request comes. So the wait is for the clock alone, not for a race.
        await asyncio.sleep(idle_since + idle_timeout + 0.1 - time.monotonic())
        assert await _get(transport, server.url) == 200

    assert server.connections == 2

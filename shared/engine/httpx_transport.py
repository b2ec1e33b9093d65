"""The httpx transport: portable and well known, with httpx's own pool settings where its pool needs them."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

import httpx

from shared.engine.transport import TlsConfig, Transport, chain_has_ssl_error, shared_header
from shared.errors import ConnectFailed, InternalError, ResponseTooLarge, TaskTimeout, TlsFailed
from shared.models import HttpRequest, HttpResponse, TransportPolicy
from shared.redaction import RedactingFilter

__all__ = ["HTTPX_MAX_IDLE_SECONDS", "HttpxTransport", "pool_limits", "socket_options"]

log = logging.getLogger(__name__)

# httpx logs every request's URL, user info included, at INFO, and httpcore every response's
# headers, Set-Cookie included, at DEBUG: their records are redacted before any handler sees them.
_REDACTED_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")
for _name in _REDACTED_LOGGERS:
    logging.getLogger(_name).addFilter(RedactingFilter())

#: The longest this transport keeps an idle connection: httpx's own default keep-alive expiry. httpcore's pool
#: looks at every connection it holds, idle ones included, twice per request (encode/httpx#3215), so its cost
#: grows with the pool. Expiring idle connections this soon lets a pool shrink to what the load uses; with
#: ``idle_timeout``'s default of 90 s it kept all 100 connections of a 100-wide batch and ran at a tenth of
#: bare httpx's rate (``benchmarks/local_throughput.py``).
HTTPX_MAX_IDLE_SECONDS = 5.0


@contextlib.contextmanager
def _map_httpx_errors() -> Iterator[None]:
    """The one place where httpx exceptions become engine errors."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TaskTimeout("attempt timed out") from exc
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        if chain_has_ssl_error(exc):
            raise TlsFailed("TLS handshake failed") from exc
        raise ConnectFailed("connection failed") from exc
    except ResponseTooLarge:
        raise
    except Exception as exc:
        if chain_has_ssl_error(exc):
            raise TlsFailed("TLS handshake failed") from exc
        log.exception("unexpected httpx failure")
        raise InternalError("unexpected transport failure") from exc


def pool_limits(policy: TransportPolicy) -> httpx.Limits:
    """The httpx pool limits for ``policy``: an idle timeout over ``HTTPX_MAX_IDLE_SECONDS`` is cut to it."""
    idle = HTTPX_MAX_IDLE_SECONDS if policy.idle_timeout is None else min(policy.idle_timeout, HTTPX_MAX_IDLE_SECONDS)
    return httpx.Limits(
        max_connections=policy.max_connections,
        max_keepalive_connections=(policy.max_connections or 1000) if policy.keep_alive else 0,
        keepalive_expiry=idle,
    )


def socket_options(policy: TransportPolicy) -> list[tuple[int, int, int]]:
    """The socket options of ``policy``: ``TCP_USER_TIMEOUT``, in milliseconds, where the platform has it."""
    if (policy.tcp_user_timeout is None) or not hasattr(socket, "TCP_USER_TIMEOUT"):
        return []
    return [(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(policy.tcp_user_timeout * 1000))]


class HttpxTransport(Transport):
    """A transport on ``httpx.AsyncClient``."""

    def __init__(self, policy: TransportPolicy, tls: TlsConfig) -> None:
        pool = httpx.AsyncHTTPTransport(
            verify=tls.ssl_context(), limits=pool_limits(policy), socket_options=socket_options(policy)
        )
        self._client = httpx.AsyncClient(
            transport=pool,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(
                None,
                connect=policy.tls_handshake_timeout,
                read=policy.response_header_timeout,
            ),
        )
        # Bodies come back as the server sent them, so no encoding is asked for unless the task does;
        # the User-Agent is the engine's to set.
        del self._client.headers["Accept-Encoding"]
        del self._client.headers["User-Agent"]
        self._keep_alive = policy.keep_alive

    async def send(
        self, request: HttpRequest, *, user_agent: str | None, max_body_bytes: int, timeout: float
    ) -> HttpResponse:
        headers = list(request.headers)
        if user_agent is not None:
            headers.append(("User-Agent", user_agent))
        if not self._keep_alive:
            headers.append(("Connection", "close"))
        with _map_httpx_errors():
            built = self._client.build_request(
                request.method, request.url, headers=headers, content=request.body or None
            )
            response = await self._client.send(built, stream=True)
            try:
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > max_body_bytes:
                        raise ResponseTooLarge(f"body over {max_body_bytes} bytes")
            finally:
                await response.aclose()
        return HttpResponse(
            response.status_code,
            tuple(shared_header((k.decode("latin-1"), v.decode("latin-1"))) for k, v in response.headers.raw),
            bytes(body),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

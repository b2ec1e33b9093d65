"""The transport interface the engine runs on: one ``send`` method, plus ``aclose``.

A transport owns one connection pool configured from a ``TransportPolicy`` and a ``TlsConfig``.
It raises only the engine's errors (``ConnectFailed``, ``TlsFailed``, ``TaskTimeout``,
``ResponseTooLarge``, ``InternalError``); each implementation maps its library's exceptions in
one place. The engine passes each attempt the task's remaining time as ``timeout``. Unless the
transport says it ``enforces_timeout``, the engine also cancels ``send`` when that time is up.
"""

from __future__ import annotations

import inspect
import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Self

from shared.errors import ResponseTooLarge
from shared.models import Header, HttpRequest, HttpResponse, TransportPolicy

__all__ = [
    "SHARED_HEADERS_LIMIT",
    "MockTransport",
    "TlsConfig",
    "Transport",
    "TransportFactory",
    "chain_has_ssl_error",
    "shared_header",
]

#: The most header pairs ``shared_header`` keeps; past it the table starts over, so values that never
#: repeat (dates, cookies, ETags) can't grow it.
SHARED_HEADERS_LIMIT = 4096


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """Trust and identity for HTTPS targets.

    ``ca_bundle`` is trusted in addition to the system trust store, on both transports: pyreqwest
    adds it to the platform verifier's roots, httpx to the context of ``ssl_context``, which loads
    the system's (OpenSSL's default paths, ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` included).
    ``client_cert`` and ``client_key`` enable mTLS. ``insecure`` turns verification off; it is
    never a fallback, only an explicit choice.
    """

    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if (self.client_key is not None) and (self.client_cert is None):
            raise ValueError("client_key needs client_cert")

    def ssl_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` that applies this configuration."""
        context = ssl.create_default_context()
        if self.ca_bundle is not None:
            context.load_verify_locations(cafile=self.ca_bundle)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


class Transport(ABC):
    """Sends one HTTP request and reads its response, body capped at ``max_body_bytes``."""

    #: True when ``send`` itself ends, with ``TaskTimeout``, once ``timeout`` has passed: connect,
    #: headers and body included. The engine then arms no timer of its own for the attempt.
    enforces_timeout: ClassVar[bool] = False

    @abstractmethod
    async def send(
        self, request: HttpRequest, *, user_agent: str | None, max_body_bytes: int, timeout: float
    ) -> HttpResponse:
        """The response to ``request`` within ``timeout`` seconds; raises an engine error on failure.

        ``user_agent``, when given, goes out as the ``User-Agent`` header after the request's own
        headers; the engine passes it only for requests that set none.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Release the connection pool."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _SharedHeaders(dict[Header, Header]):
    def __missing__(self, pair: Header) -> Header:
        if len(self) >= SHARED_HEADERS_LIMIT:
            self.clear()
        self[pair] = pair
        return pair


#: ``shared_header(pair)`` is an equal pair seen lately, the one tuple that every response with it keeps, or ``pair``
#: itself the first time. The responses of a batch mostly repeat their names and many of their values (server,
#: content type, connection), and a batch keeps every result until its caller lets go: shared, the headers of a
#: typical nginx response cost their result 80 bytes instead of 960, 88 MB at 100,000 results. A pair seen lately
#: is found without leaving C.
shared_header: Callable[[Header], Header] = _SharedHeaders().__getitem__


#: Builds the transport for one transport policy and TLS configuration.
TransportFactory = Callable[[TransportPolicy, TlsConfig], Transport]


class MockTransport(Transport):
    """A transport that answers every request with ``handler(request)``, for tests without a server.

    ``handler`` is a function or a coroutine function; it gets each attempt's request, with the
    ``User-Agent`` the engine adds, and returns an ``HttpResponse``. To play a failing target it
    raises an engine error (``ConnectFailed``, ``TlsFailed``, ``TaskTimeout``), which the engine
    retries or reports as it would a real one; to play a slow one it sleeps, and the task's
    deadline still applies. ``TaskRunner(transport=MockTransport(handler))`` runs local mode on it.
    """

    def __init__(self, handler: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]) -> None:
        self._handler = handler

    async def send(
        self, request: HttpRequest, *, user_agent: str | None, max_body_bytes: int, timeout: float
    ) -> HttpResponse:
        if user_agent is not None:
            request = request.model_copy(update={"headers": [*request.headers, ("User-Agent", user_agent)]})
        answer = self._handler(request)
        response = await answer if inspect.isawaitable(answer) else answer
        if len(response.body) > max_body_bytes:
            raise ResponseTooLarge(f"body over {max_body_bytes} bytes")
        return response

    async def aclose(self) -> None:
        return None


def chain_has_ssl_error(exc: BaseException) -> bool:
    """Whether ``exc`` or anything in its cause/context chain is an ``ssl.SSLError``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False

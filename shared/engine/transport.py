"""The transport interface the engine runs on: one ``send`` method, plus ``aclose``.

A transport owns one connection pool configured from a ``TransportPolicy`` and a ``TlsConfig``.
It raises only the engine's errors (``ConnectFailed``, ``TlsFailed``, ``TaskTimeout``,
``ResponseTooLarge``, ``InternalError``); each implementation maps its library's exceptions in
one place. The engine passes each attempt the task's remaining time as ``timeout``. Unless the
transport says it ``enforces_timeout``, the engine also cancels ``send`` when that time is up.
"""

from __future__ import annotations

import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Self

from shared.errors import ResponseTooLarge
from shared.models import HttpRequest, HttpResponse, TransportPolicy

__all__ = ["MockTransport", "TlsConfig", "Transport", "TransportFactory", "chain_has_ssl_error"]


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


#: Builds the transport for one transport policy and TLS configuration.
TransportFactory = Callable[[TransportPolicy, TlsConfig], Transport]


class MockTransport(Transport):
    """A transport that answers with ``handler(request)``, for unit tests of the engine."""

    def __init__(self, handler: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self._handler = handler

    async def send(
        self, request: HttpRequest, *, user_agent: str | None, max_body_bytes: int, timeout: float
    ) -> HttpResponse:
        if user_agent is not None:
            request = request.model_copy(update={"headers": [*request.headers, ("User-Agent", user_agent)]})
        response = await self._handler(request)
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

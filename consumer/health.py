"""The worker's one HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``.

It runs on its own thread, so a busy event loop can't make a probe time out, and it reads the
worker's state through a callable that returns plain values.

* ``/healthz``: 200 while the event loop and the fetcher thread both beat recently; 503 otherwise.
* ``/readyz``: 200 while the worker is a member of its group and isn't draining; 503 otherwise.
* ``/metrics``: every TRS metric, in the format the scraper asks for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

__all__ = ["HealthServer", "Probe"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    """The answers of the two probes, with the reason when one fails."""

    healthy: bool
    ready: bool
    reason: str = ""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(REGISTRY), content_type)
        elif path in ("/healthz", "/readyz"):
            probe = self.server.probe()
            ok = probe.healthy if path == "/healthz" else (probe.healthy and probe.ready)
            text = "ok\n" if ok else f"{probe.reason or 'not ready'}\n"
            self._reply(200 if ok else 503, text.encode(), "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found\n", "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes come every few seconds; they are not worth a log line each.
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], probe: Callable[[], Probe]) -> None:
        super().__init__(address, _Handler)
        self.probe = probe


class HealthServer:
    """Serves the three endpoints on ``host:port`` until ``stop``."""

    def __init__(self, host: str, port: int, probe: Callable[[], Probe]) -> None:
        self._server = _Server((host, port), probe)
        self._thread = threading.Thread(target=self._server.serve_forever, name="trs-health", daemon=True)

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def start(self) -> None:
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on port %d", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

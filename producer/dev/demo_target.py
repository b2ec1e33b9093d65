"""A stand-in fleet for ``trs dev demo``: one HTTP server on loopback that answers for many hosts.

``GET /hosts/<name>/health`` answers 200 with a small JSON body, except that every
``FLAKY_EVERY``-th host answers 503 on its first call, so a demo run shows a retry succeed.
It runs on threads in this process; the standard library's server is enough for a demo batch.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FLAKY_EVERY", "demo_target"]

#: One host in this many fails its first health check with a 503.
FLAKY_EVERY = 50


class _FleetHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes; with Nagle's algorithm the body would wait
    # for the client's delayed ACK, about 40 ms, on every request of a kept-alive connection.
    disable_nagle_algorithm = True
    server: _FleetServer

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "hosts" or parts[2] != "health":
            self._reply(404, {"error": "not found"})
            return
        host = parts[1]
        calls = self.server.count(host)
        number = int(host.rsplit("-", 1)[-1]) if host.rsplit("-", 1)[-1].isdigit() else 1
        if number % FLAKY_EVERY == 0 and calls == 1:
            self._reply(503, {"host": host, "status": "starting"})
        else:
            self._reply(200, {"host": host, "status": "healthy", "calls": calls})

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _FleetServer(ThreadingHTTPServer):
    daemon_threads = True
    # A batch opens many connections at once; the default backlog of 5 would refuse them.
    request_queue_size = 1024

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FleetHandler)
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()

    def count(self, host: str) -> int:
        with self._lock:
            self._calls[host] += 1
            return self._calls[host]


@contextlib.contextmanager
def demo_target() -> Iterator[str]:
    """Serve the fleet until the block ends; yields its base URL."""
    server = _FleetServer()
    thread = threading.Thread(target=server.serve_forever, name="trs-demo-target", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

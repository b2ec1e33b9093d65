"""A TCP proxy on loopback that counts the connections it gets and can refuse them.

While ``refusing`` it resets every connection it accepts, which a client sees as a refused
connection (a ``connect_error``); otherwise it forwards each one to its upstream. Either way the
connection is counted, with the time it came, so a test knows how many connection attempts a
host saw, and when. It runs on threads of the test process: it only copies bytes.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator


class CountingProxy:
    """Listens on a free loopback port; ``url`` is its address as an http base URL."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopped = threading.Event()
        self.refusing = True
        self._arrivals: list[float] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def arrivals(self) -> list[float]:
        """When each connection came (``time.monotonic()``), in order."""
        with self._lock:
            return list(self._arrivals)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._arrivals)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                self._arrivals.append(time.monotonic())
            if self.refusing:
                # Linger 0: close sends a reset, as a port with no listener would.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        with client, contextlib.suppress(OSError), socket.create_connection(self._upstream, timeout=10) as upstream:
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join(10)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def counting_proxy(upstream_url: str) -> Iterator[CountingProxy]:
    """A proxy to ``upstream_url``'s host and port (``http://127.0.0.1:PORT``), refusing at first."""
    host, _, port = upstream_url.removeprefix("http://").partition(":")
    proxy = CountingProxy((host, int(port)))
    try:
        yield proxy
    finally:
        proxy.close()

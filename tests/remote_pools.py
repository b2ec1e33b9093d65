"""Worker pools for remote-mode tests: one worker per distinct worker-side configuration.

In remote mode, TLS to the targets, the response size limit and the target allowlist are the
workers' settings, not the client's. A test that asks for one of them gets a worker started with
those flags, on a service (request topic) of its own, so pools never take each other's tasks.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

from producer.topics import TopicAdmin
from shared.engine import TlsConfig
from shared.wire import request_topic
from tests.worker_process import WorkerProcess

#: Flags are ``(name, value)`` pairs of ``trs-worker`` options, e.g. ``("ca-bundle", "/x/ca.pem")``.
Flags = tuple[tuple[str, str | bool], ...]


class RemotePools:
    """Starts a worker per distinct ``Flags`` on first use and stops them all on ``close``."""

    def __init__(self, bootstrap: str, admin: TopicAdmin, log_dir: Path) -> None:
        self.bootstrap = bootstrap
        self._admin = admin
        self._log_dir = log_dir
        self._pools: dict[Flags, tuple[str, WorkerProcess]] = {}

    def start(self, *configurations: Flags) -> None:
        """Start the workers of ``configurations`` that don't run yet, all at once, and wait for them."""
        started = [self._spawn(flags) for flags in dict.fromkeys(configurations) if flags not in self._pools]
        for worker in started:
            worker.wait_ready()

    def service(self, flags: Flags) -> str:
        """The service whose tasks a worker with ``flags`` runs."""
        self.start(flags)
        return self._pools[flags][0]

    def worker(self, flags: Flags) -> WorkerProcess:
        self.start(flags)
        return self._pools[flags][1]

    def _spawn(self, flags: Flags) -> WorkerProcess:
        service = f"behaviour-{uuid.uuid4().hex[:8]}"
        self._admin.init([service], partitions=4)
        worker = WorkerProcess(
            self.bootstrap,
            self._log_dir / f"{service}.log",
            group_id=f"{service}-workers",
            topics=[request_topic(service)],
            **{name.replace("-", "_"): value for name, value in flags},
        )
        self._pools[flags] = (service, worker)
        return worker

    def close(self) -> None:
        for _, worker in self._pools.values():
            with contextlib.suppress(Exception):
                worker.terminate(30)
            worker.close()
        self._pools.clear()


def worker_flags(options: dict[str, Any]) -> Flags:
    """Take the worker-side options out of ``options`` and return them as ``trs-worker`` flags."""
    flags: list[tuple[str, str | bool]] = []
    tls: TlsConfig | None = options.pop("tls", None)
    if tls is not None:
        for name in ("ca_bundle", "client_cert", "client_key"):
            value = getattr(tls, name)
            if value is not None:
                flags.append((name.replace("_", "-"), value))
        if tls.insecure:
            flags.append(("insecure", True))
    if "max_response_bytes" in options:
        flags.append(("max-response-bytes", str(options.pop("max_response_bytes"))))
    if "allowed_targets" in options:
        flags.append(("allowed-targets", ",".join(options.pop("allowed_targets"))))
    return tuple(sorted(flags))

"""``trs-worker`` whose engine never touches the network: the worker's own CPU per task, without the HTTP request.

It takes the same flags as ``python -m consumer`` and runs the same worker, but every transport is
``benchmarks.engine_overhead.InstantTransport``, which answers each request at once with a fresh 200 response. What
is left is the worker's own work: consuming, decoding, the engine, encoding, producing and tracking offsets.
``benchmarks.worker_throughput --runs instant`` drains it and measures it as ``worker1``; the difference between the
two is what the HTTP requests cost.

    python -m benchmarks.worker_throughput --runs worker1,instant --quick
"""

from __future__ import annotations

import shared.engine.engine as engine_module
from benchmarks.engine_overhead import InstantTransport
from shared.engine.transport import TransportFactory


def main() -> None:
    transport = InstantTransport()

    def instant(name: str) -> TransportFactory:
        return lambda policy, tls: transport

    # The worker builds its engine from a transport's name; the engine looks the factory up by that name here.
    engine_module.transport_factory = instant
    from consumer.cli import main as worker_main

    worker_main()


if __name__ == "__main__":
    main()

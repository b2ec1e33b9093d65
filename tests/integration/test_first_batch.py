"""A fresh process's first remote batch: it must not start late.

A new process's idempotent producer waited up to a second for its producer id, and its first
batch with it, so a batch of 2-second tasks with a 3-second timeout got no response at all. The
runner now warms its Kafka clients up when it is entered (see ``RemoteBackend.warm_up``). The
client runs in a process of its own: this one's producer was warmed long ago.
"""

from __future__ import annotations

from tests.http_target import HttpTarget
from tests.integration.conftest import SharedWorker
from tests.reliability.remote_client import RemoteClient


def test_the_first_batch_of_a_fresh_process_leaves_its_tasks_their_whole_timeout(
    kafka_bootstrap: str, shared_worker: SharedWorker, target: HttpTarget
) -> None:
    client = RemoteClient(
        "--bootstrap",
        kafka_bootstrap,
        "--service",
        shared_worker.service.name,
        "--url",
        f"{target.http}/sleep?s=2",
        "--tasks",
        "5",
        "--timeout",
        "3",
    )
    try:
        client.next_event("done", timeout=30)
        assert client.wait(10) == 0
    finally:
        client.kill()

    assert [r["outcome"] for r in client.results()] == ["response"] * 5

"""Fixtures of the integration suite: the topic admin and a shared worker on the real broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from producer.topics import TopicAdmin
from shared.wire import request_topic
from tests.worker_process import WorkerProcess, running_workers


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> TopicAdmin:
    """A topic admin on the test broker, with ``trs-control`` and ``trs-dlq`` in place."""
    topics = TopicAdmin({"bootstrap.servers": kafka_bootstrap})
    topics.init()
    return topics


@dataclass(frozen=True)
class Service:
    """A service of its own: its name, request topic and partition count."""

    name: str
    request_topic: str
    partitions: int


def new_service(admin: TopicAdmin, *, partitions: int = 4) -> Service:
    name = f"it-{uuid.uuid4().hex[:10]}"
    admin.init([name], partitions=partitions)
    return Service(name, request_topic(name), partitions)


@dataclass(frozen=True)
class SharedWorker:
    service: Service
    group_id: str
    worker: WorkerProcess


@pytest.fixture(scope="module")
def shared_worker(
    kafka_bootstrap: str, admin: TopicAdmin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedWorker]:
    """One worker on a service of its own, shared by the tests of a module that don't stop it."""
    service = new_service(admin)
    group_id = f"workers-{uuid.uuid4().hex[:8]}"
    log_dir: Path = tmp_path_factory.mktemp("shared-worker")
    with running_workers(kafka_bootstrap, log_dir, group_id=group_id, topics=[service.request_topic]) as (worker,):
        yield SharedWorker(service, group_id, worker)

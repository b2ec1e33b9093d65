"""Per-host limits across workers: keyed by host, every task of a host goes to one worker, so that
worker's cap is the fleet's; keyed by task, each worker keeps its own.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from producer import HttpRequest, Task, TaskRunner
from producer.remote import PartitionKey
from producer.topics import TopicAdmin
from tests.http_target import HttpTarget
from tests.integration.conftest import new_service
from tests.worker_process import running_workers

pytestmark = pytest.mark.integration


async def _peak_of_200_capped_at_4(
    bootstrap: str, service: str, target: HttpTarget, partition_key: PartitionKey
) -> int:
    k = uuid.uuid4().hex
    one = Task(
        service_name=service,
        request=HttpRequest(url=f"{target.http}/sleep?s=0.05&key={k}"),
        timeout=60,
        policy={"host": {"max_concurrent_per_host": 4}},
    )
    async with TaskRunner(
        mode="remote", service_name=service, bootstrap_servers=bootstrap, partition_key=partition_key
    ) as runner:
        results = await (await runner.launch(runner.create_task_list(one, 200))).wait()
    assert Counter(r.outcome for r in results) == {"response": 200}
    return target.peak(k)


async def test_keyed_by_host_two_workers_together_keep_to_the_cap(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget, tmp_path: Path
) -> None:
    service = new_service(admin, partitions=4)
    with running_workers(
        kafka_bootstrap, tmp_path, 2, group_id=f"fleet-{service.name}", topics=[service.request_topic]
    ):
        by_host = await _peak_of_200_capped_at_4(kafka_bootstrap, service.name, target, "host")
        by_task = await _peak_of_200_capped_at_4(kafka_bootstrap, service.name, target, "task")

    assert by_host == 4
    # Keyed by task, both workers run the host's tasks, each up to its own cap.
    assert 4 < by_task <= 8

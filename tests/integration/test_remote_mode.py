"""What only remote mode has: reply topics, dedup, client-side deadlines, cancel through workers, errors."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer

from producer import BrokerUnavailable, ErrorCode, HttpRequest, Task, TaskRunner, TopicMissing
from producer.dev.embedded_broker import free_port
from producer.remote import PartitionKey
from producer.topics import TopicAdmin, TopicSpec
from shared.models import ResultEnvelope, TaskError, TaskResult
from shared.wire import encode_result, new_batch_id, reply_topic
from tests.http_target import HttpTarget
from tests.integration.conftest import new_service
from tests.kafka_io import read
from tests.remote_pools import RemotePools
from tests.waiting import eventually, wait_until
from tests.worker_process import running_workers

pytestmark = pytest.mark.integration


def task(url: str, *, timeout: float = 30.0) -> Task:
    return Task(service_name="remote", request=HttpRequest(url=url), timeout=timeout)


async def test_two_clients_at_once_each_get_only_their_own_results(
    remote_pools: RemotePools, target: HttpTarget
) -> None:
    service = remote_pools.service(())

    async def one_client(n: int) -> tuple[set[uuid.UUID], list[TaskResult]]:
        async with TaskRunner(mode="remote", service_name=service, bootstrap_servers=remote_pools.bootstrap) as runner:
            tasks = runner.create_task_list(task(f"{target.http}/echo"), 200)
            batch = await runner.launch(tasks)
            results = await batch.wait()
            await runner.close(batch)
            return {t.id for t in tasks}, results

    (ids_a, results_a), (ids_b, results_b) = await asyncio.gather(one_client(1), one_client(2))

    assert {r.task_id for r in results_a} == ids_a
    assert {r.task_id for r in results_b} == ids_b
    assert len(results_a) == len(results_b) == 200
    assert not ids_a & ids_b


async def test_a_result_delivered_twice_is_yielded_once(remote_pools: RemotePools, target: HttpTarget) -> None:
    service = remote_pools.service(())
    async with TaskRunner(mode="remote", service_name=service, bootstrap_servers=remote_pools.bootstrap) as runner:
        # ``open`` keeps the batch open until every copy of ``twice``'s result has been read.
        twice, open_ = task(f"{target.http}/sleep?s=2"), task(f"{target.http}/sleep?s=60")
        batch = await runner.launch([twice, open_])
        # Two copies of a result, as a worker restarted after producing it would send,
        # before the worker's own result for the same task, which the target holds back for 2 s.
        copy = TaskResult(task_id=twice.id, error=TaskError.of(ErrorCode.TIMEOUT))
        value, headers = encode_result(ResultEnvelope(batch_id=batch.id, result=copy))
        producer = Producer({"bootstrap.servers": remote_pools.bootstrap})
        for _ in range(2):
            producer.produce(reply_topic(service, batch.id), value=value, headers=headers)
        assert producer.flush(10) == 0

        first = await asyncio.wait_for(anext(aiter(batch)), 15)
        # The second copy, then the worker's own result for the task.
        await eventually(lambda: batch.duplicates == 2, 15, "both duplicates")
        pending = batch.pending
        await runner.close(batch)

    assert first == copy
    assert pending == {open_.id}
    assert batch.duplicates == 2


async def test_no_worker_means_no_result_after_the_deadline_and_grace(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget
) -> None:
    service = new_service(admin)
    async with TaskRunner(
        mode="remote", service_name=service.name, bootstrap_servers=kafka_bootstrap, result_grace=0.5
    ) as runner:
        batch = await runner.launch([task(f"{target.http}/ok", timeout=1.0), task(f"{target.http}/ok", timeout=2.0)])
        results = await batch.wait()
        await runner.close(batch)

    assert [r.error.code for r in results if r.error] == [ErrorCode.NO_RESULT, ErrorCode.NO_RESULT]
    assert results[0].error is not None
    assert results[0].error.message == "no result arrived before the task's deadline"
    assert [r.task_id for r in results] == [t.id for t in batch.tasks]


async def test_cancel_mid_batch_ends_open_tasks_and_workers_skip_the_queued_ones(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget, tmp_path: Path
) -> None:
    service = new_service(admin, partitions=1)
    key = uuid.uuid4().hex
    with running_workers(
        kafka_bootstrap, tmp_path, group_id=f"{service.name}-workers", topics=[service.request_topic], max_inflight=2
    ) as (worker,):
        async with TaskRunner(mode="remote", service_name=service.name, bootstrap_servers=kafka_bootstrap) as runner:
            tasks = runner.create_task_list(task(f"{target.http}/sleep?s=5&key={key}"), 20)
            batch = await runner.launch(tasks)
            await asyncio.to_thread(wait_until, lambda: target.sleeping(key) == 2, 15, "two tasks in flight")

            await runner.cancel(batch)
            results = await batch.wait()
            await runner.close(batch)

        # Every task the worker had taken or still finds on the topic ends without being sent.
        wait_until(
            lambda: worker.metrics().get('trs_worker_tasks_total{outcome="cancelled"}', 0) == 20,
            30,
            "the worker to account for all 20 tasks",
        )
        hits = target.hits(key)

    assert Counter(r.outcome for r in results) == {"cancelled": 20}
    assert hits == 2


async def test_close_deletes_the_reply_topic(remote_pools: RemotePools, target: HttpTarget, admin: TopicAdmin) -> None:
    service = remote_pools.service(())
    async with TaskRunner(mode="remote", service_name=service, bootstrap_servers=remote_pools.bootstrap) as runner:
        batch = await runner.launch([task(f"{target.http}/ok")])
        await batch.wait()
        topic = reply_topic(service, batch.id)
        existed = admin.exists(topic)

        await runner.close(batch)
        # Deleted in the background, once the reader's last fetches can't name it.
        await asyncio.to_thread(wait_until, lambda: not admin.exists(topic), 10, "the reply topic's deletion")
        still_running = runner.state

    assert existed
    assert still_running.value == "opened"


async def test_topics_gc_deletes_an_orphan_and_spares_a_live_batch(
    remote_pools: RemotePools, target: HttpTarget, admin: TopicAdmin
) -> None:
    service = remote_pools.service(())
    now = datetime.now(UTC)
    orphan = reply_topic(service, new_batch_id(now - timedelta(hours=3), now - timedelta(hours=2)))
    admin.create(TopicSpec(orphan, 1, timedelta(hours=1)))
    async with TaskRunner(mode="remote", service_name=service, bootstrap_servers=remote_pools.bootstrap) as runner:
        live = await runner.launch([task(f"{target.http}/sleep?s=2")])
        live_topic = reply_topic(service, live.id)

        deleted = admin.collect_garbage(timedelta(seconds=0))

        assert orphan in deleted
        assert live_topic not in deleted
        assert admin.exists(live_topic)
        assert not admin.exists(orphan)
        assert [r.ok for r in await live.wait()] == [True]


async def test_launch_without_a_broker_fails_clearly_within_its_timeout() -> None:
    address = f"127.0.0.1:{free_port()}"
    async with TaskRunner(mode="remote", service_name="svc", bootstrap_servers=address, request_timeout=2) as runner:
        with pytest.raises(BrokerUnavailable, match=f"no Kafka broker answered at {address} within 2 s"):
            await asyncio.wait_for(runner.launch([task("http://127.0.0.1/")]), 20)
        assert await runner.alive(timeout=1) is False


async def test_launch_to_a_service_without_a_request_topic_names_the_remedy(kafka_bootstrap: str) -> None:
    async with TaskRunner(mode="remote", service_name="nobody-home", bootstrap_servers=kafka_bootstrap) as runner:
        assert await runner.alive() is True
        with pytest.raises(TopicMissing, match="create it with 'trs topics init --service nobody-home'"):
            await runner.launch([task("http://127.0.0.1/")])
    assert await runner.alive() is False


def test_a_closed_topic_admin_refuses_work(kafka_bootstrap: str) -> None:
    admin = TopicAdmin({"bootstrap.servers": kafka_bootstrap})
    assert admin.exists("trs-nobody-http-v1-send") is False
    admin.close()
    with pytest.raises(RuntimeError, match=f"the topic admin for {kafka_bootstrap} is closed"):
        admin.exists("trs-nobody-http-v1-send")


def test_local_only_options_are_refused_in_remote_mode() -> None:
    with pytest.raises(ValueError, match="max_response_bytes is a worker setting in remote mode"):
        TaskRunner(mode="remote", service_name="svc", max_response_bytes=10)
    with pytest.raises(ValueError, match="bootstrap_servers only applies in remote mode"):
        TaskRunner(mode="local", service_name="svc", bootstrap_servers="127.0.0.1:9092")


@pytest.mark.parametrize(("key", "partitions_used"), [("host", 1), ("task", 4)])
async def test_partition_key_places_tasks_by_task_or_by_host(
    kafka_bootstrap: str, admin: TopicAdmin, key: PartitionKey, partitions_used: int
) -> None:
    service = new_service(admin, partitions=4)
    async with TaskRunner(
        mode="remote", service_name=service.name, bootstrap_servers=kafka_bootstrap, partition_key=key
    ) as runner:
        batch = await runner.launch(runner.create_task_list(task("http://127.0.0.1:9/", timeout=5), 40))
        messages = await asyncio.to_thread(
            read, kafka_bootstrap, service.request_topic, until=lambda m: len(m) >= 40, partitions=4
        )
        await runner.close(batch)

    assert len(messages) == 40
    assert len({m.partition() for m in messages}) == partitions_used
    keys = {(m.key() or b"").decode() for m in messages}
    assert keys == ({"127.0.0.1:9"} if key == "host" else {str(t.id) for t in batch.tasks})


async def test_cleanup_deletes_reply_topics_still_waiting_for_deletion(
    remote_pools: RemotePools, target: HttpTarget, admin: TopicAdmin
) -> None:
    service = remote_pools.service(())
    async with TaskRunner(mode="remote", service_name=service, bootstrap_servers=remote_pools.bootstrap) as runner:
        batches = [await runner.launch([task(f"{target.http}/ok")]) for _ in range(3)]
        for batch in batches:
            await batch.wait()
            await runner.close(batch)
    # The runner is cleaned up right after the closes, before their deletions were due.

    assert not any(admin.exists(reply_topic(service, batch.id)) for batch in batches)

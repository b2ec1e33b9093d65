"""A reply topic deleted under its client: by ``trs topics gc``, by a foreign tool, and in a hunt for crashes.

librdkafka 2.5 and later crash on a fetch for a topic deleted under the reader when the broker
adds a leader hint to the error, as the embedded broker does. TRS's own deletions make the reader
let go first (a release notice on ``trs-control``); a foreign tool's deletion of a running
batch's topic can't be guarded, and kills the client, as the README says.

The module has a broker of its own: a gc whose clock is ahead takes every reply topic of its
broker that looks expired, and the crash is the embedded broker's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer
from kafka.admin import KafkaAdminClient

from producer import BrokerUnavailable, ClientPolicy, HostPolicy, HttpRequest, Task, TaskRunner
from producer.dev.embedded_broker import EmbeddedBroker
from producer.shared_producer import close_shared_producers
from producer.topics import TopicAdmin, TopicSpec
from shared.wire import CONTROL_KIND_RELEASE, CONTROL_TOPIC, HEADER_KIND, new_batch_id, reply_topic, request_topic
from tests.http_target import HttpTarget
from tests.reliability.remote_client import RemoteClient
from tests.reliability.worker_logs import loud_lines
from tests.trs_cli import trs
from tests.waiting import eventually, wait_until
from tests.worker_process import ROOT, WorkerProcess, running_workers

pytestmark = pytest.mark.integration

#: Seconds past a task's deadline that its result may take.
GRACE = 1.0
#: Timeout of tasks whose reply topic goes while they run; they sleep far longer than this.
VICTIM_TIMEOUT = 4.0
#: Timeout of every other task: their batches look live to a gc whose clock is ``GC_CLOCK_AHEAD`` ahead.
LIVE_TIMEOUT = 60.0
GC_CLOCK_AHEAD = timedelta(seconds=30)
#: Seconds past deadline plus grace that the client's no_result may come, on a busy machine.
LATE = 3.0
HUNT_ROUNDS = 50
DROPPED = "trs_worker_results_dropped_total"


@dataclass(frozen=True)
class Cluster:
    bootstrap: str
    admin: TopicAdmin
    service: str
    worker: WorkerProcess


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The module's own embedded broker, with one worker on one service."""
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        admin = TopicAdmin({"bootstrap.servers": bootstrap})
        service = f"deletion-{uuid.uuid4().hex[:8]}"
        admin.init([service], partitions=2)
        log_dir = tmp_path_factory.mktemp("deletion-worker")
        with running_workers(bootstrap, log_dir, group_id=f"{service}-workers", topics=[request_topic(service)]) as (
            worker,
        ):
            yield Cluster(bootstrap, admin, service, worker)
        # Before the broker goes, so nothing of this process keeps reconnecting to it.
        close_shared_producers(bootstrap_servers=bootstrap)
        admin.close()


@asynccontextmanager
async def runner(cluster: Cluster) -> AsyncIterator[TaskRunner]:
    async with TaskRunner(
        mode="remote", service_name=cluster.service, bootstrap_servers=cluster.bootstrap, result_grace=GRACE
    ) as running:
        yield running


#: Tasks cut by their deadline on purpose count as timeouts: with the default breaker, five of them would end the
#: next batch's tasks to the same target ``circuit_open``.
NO_BREAKER = ClientPolicy(host=HostPolicy(breaker=None))


def task(cluster: Cluster, url: str, timeout: float = LIVE_TIMEOUT) -> Task:
    return Task(service_name=cluster.service, request=HttpRequest(url=url), timeout=timeout, policy=NO_BREAKER)


def delete_as_a_foreign_tool(bootstrap: str, topics: list[str]) -> None:
    """Delete ``topics`` with kafka-python, as an operator's admin tool would: no notice first."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="foreign-admin-tool")
    try:
        admin.delete_topics(topics, timeout_ms=10_000)
    finally:
        admin.close()


async def test_gc_deleting_a_running_batchs_reply_topic_ends_its_open_tasks_no_result_and_all_else_goes_on(
    cluster: Cluster, target: HttpTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="producer.reply_reader")
    dropped_before = cluster.worker.metrics()[DROPPED]
    async with runner(cluster) as victim_runner, runner(cluster) as bystander_runner:
        bystander = await bystander_runner.launch(
            bystander_runner.create_task_list(task(cluster, f"{target.http}/sleep?s=3"), 5)
        )
        slow = victim_runner.create_task_list(task(cluster, f"{target.http}/sleep?s=60", VICTIM_TIMEOUT), 5)
        victim = await victim_runner.launch([task(cluster, f"{target.http}/ok", VICTIM_TIMEOUT), *slow])
        await eventually(lambda: len(victim.results) == 1, 15, "the quick task's result")

        ahead = datetime.now(UTC) + GC_CLOCK_AHEAD
        deleted = await asyncio.to_thread(cluster.admin.collect_garbage, timedelta(0), now=ahead)
        victim_results = await asyncio.wait_for(victim.wait(), VICTIM_TIMEOUT + GRACE + LATE + 5)
        victim_ended = time.monotonic() - victim.launched_at
        bystander_results = await asyncio.wait_for(bystander.wait(), 30)
        after = await victim_runner.launch(victim_runner.create_task_list(task(cluster, f"{target.http}/ok"), 20))
        after_results = await asyncio.wait_for(after.wait(), 30)
        for running, batch in ((victim_runner, victim), (victim_runner, after), (bystander_runner, bystander)):
            await running.close(batch)
    # The worker cuts the slow tasks at their deadline and finds their reply topic gone.
    await asyncio.to_thread(
        wait_until, lambda: cluster.worker.metrics()[DROPPED] >= dropped_before + 5, 15, "the dropped results"
    )

    assert reply_topic(cluster.service, victim.id) in deleted
    assert reply_topic(cluster.service, bystander.id) not in deleted
    assert "is about to be deleted while its batch runs" in caplog.text
    assert Counter(r.outcome for r in victim_results) == {"response": 1, "no_result": 5}
    assert VICTIM_TIMEOUT + GRACE - 0.2 <= victim_ended <= VICTIM_TIMEOUT + GRACE + LATE
    assert [r.outcome for r in bystander_results] == ["response"] * 5
    assert [r.outcome for r in after_results] == ["response"] * 20
    assert cluster.worker.process.poll() is None
    assert cluster.worker.get("/readyz")[0] == 200
    # The release notice on trs-control is no cancel order, and no reason for a warning.
    assert loud_lines(cluster.worker.log()) == []


async def test_a_foreign_tool_deleting_a_finished_batchs_reply_topic_changes_nothing(
    cluster: Cluster, target: HttpTarget
) -> None:
    async with runner(cluster) as running:
        finished = await running.launch(running.create_task_list(task(cluster, f"{target.http}/ok"), 5))
        await asyncio.wait_for(finished.wait(), 30)
        # The reader lets go of a batch's topic when its last task ends, before it takes up the next
        # batch's: once that one has a result, the finished batch's topic is read by no one.
        following = await running.launch(
            [
                task(cluster, f"{target.http}/ok"),
                *running.create_task_list(task(cluster, f"{target.http}/sleep?s=1"), 3),
            ]
        )
        await eventually(lambda: len(following.results) >= 1, 15, "the next batch's first result")
        await asyncio.to_thread(
            delete_as_a_foreign_tool, cluster.bootstrap, [reply_topic(cluster.service, finished.id)]
        )
        following_results = await asyncio.wait_for(following.wait(), 30)
        # Its topic is gone already: not an error.
        await running.close(finished)
        await running.close(following)

    assert [r.outcome for r in finished.results] == ["response"] * 5
    assert [r.outcome for r in following_results] == ["response"] * 4
    assert not cluster.admin.exists(reply_topic(cluster.service, finished.id))


async def test_a_foreign_tool_deleting_a_running_batchs_reply_topic_kills_its_client_on_the_embedded_broker(
    cluster: Cluster, target: HttpTarget
) -> None:
    client = RemoteClient(
        "--bootstrap", cluster.bootstrap,
        "--service", cluster.service,
        "--quick-url", f"{target.http}/ok",
        "--url", f"{target.http}/sleep?s=60",
        "--tasks", "5",
        "--timeout", str(VICTIM_TIMEOUT),
        "--grace", str(GRACE),
    )  # fmt: skip
    try:
        launched = client.next_event("launched", 30)
        # The quick task's result proves that the client's reader fetches the topic.
        client.next_event("result", 30)
        await asyncio.to_thread(delete_as_a_foreign_tool, cluster.bootstrap, [launched["reply_topic"]])
        exit_code = client.wait(15)
    finally:
        client.kill()
    async with runner(cluster) as other:
        batch = await other.launch(other.create_task_list(task(cluster, f"{target.http}/ok"), 10))
        others = await asyncio.wait_for(batch.wait(), 30)
        await other.close(batch)

    assert exit_code == -signal.SIGSEGV, client.stderr
    assert [r.outcome for r in others] == ["response"] * 10
    assert cluster.worker.process.poll() is None


async def test_a_bad_release_notice_is_ignored_with_a_warning_by_clients_and_in_silence_by_workers(
    cluster: Cluster, target: HttpTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="producer.reply_reader")
    async with runner(cluster) as running:
        batch = await running.launch([task(cluster, f"{target.http}/ok"), task(cluster, f"{target.http}/sleep?s=2")])
        # A result means the reader's assignment is done, and with it its reading of trs-control.
        await eventually(lambda: len(batch.results) == 1, 15, "the first result")
        producer = Producer({"bootstrap.servers": cluster.bootstrap})
        producer.produce(CONTROL_TOPIC, value=b"{", headers=[(HEADER_KIND, CONTROL_KIND_RELEASE.encode())])
        assert producer.flush(10) == 0
        producer.close()
        results = await asyncio.wait_for(batch.wait(), 30)
        await running.close(batch)

    assert [r.outcome for r in results] == ["response", "response"]
    assert "ignored a bad release notice on trs-control: value: not valid JSON" in caplog.text
    assert loud_lines(cluster.worker.log()) == []


def test_gc_deletes_nothing_when_the_broker_refuses_its_release_notice(cluster: Cluster) -> None:
    now = datetime.now(UTC)
    orphans = [
        reply_topic(cluster.service, new_batch_id(now - timedelta(hours=3), now - timedelta(hours=2)))
        for _ in range(20)
    ]
    for orphan in orphans:
        cluster.admin.create(TopicSpec(orphan, 1, timedelta(hours=1)))
    # A message limit the notice naming twenty topics exceeds.
    strict = TopicAdmin({"bootstrap.servers": cluster.bootstrap, "message.max.bytes": 1000})
    try:
        with pytest.raises(BrokerUnavailable) as refused:
            strict.collect_garbage(timedelta(hours=1))
        left = [orphan for orphan in orphans if cluster.admin.exists(orphan)]
    finally:
        strict.close()
        cluster.admin.delete(orphans)

    assert str(refused.value) == (
        "could not publish the release notice to trs-control: Unable to produce message: Broker: Message size too large"
    )
    assert left == orphans


@pytest.fixture
def bare_broker() -> Iterator[str]:
    """An embedded broker without any of TRS's topics."""
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers
        close_shared_producers(bootstrap_servers=broker.bootstrap_servers)


def test_gc_without_trs_control_deletes_nothing_and_names_the_remedy(bare_broker: str) -> None:
    admin = TopicAdmin({"bootstrap.servers": bare_broker})
    now = datetime.now(UTC)
    orphan = reply_topic("svc", new_batch_id(now - timedelta(hours=3), now - timedelta(hours=2)))
    admin.create(TopicSpec(orphan, 1, timedelta(hours=1)))
    gc = trs("topics", "gc", "--older-than", "1h", "--bootstrap-servers", bare_broker, timeout=60)
    still_there = admin.exists(orphan)
    admin.close()

    assert gc.returncode == 1
    assert gc.stderr.strip().splitlines()[-1] == (
        "Error: topic trs-control does not exist, so no client can be told to let go of a reply topic "
        "before it is deleted: create it with 'trs topics init'"
    )
    assert still_there


async def test_a_reader_without_trs_control_says_so_once_and_reads_on(
    bare_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="producer.reply_reader")
    service = f"bare-{uuid.uuid4().hex[:8]}"
    admin = TopicAdmin({"bootstrap.servers": bare_broker})
    admin.ensure([TopicSpec(request_topic(service), 1, timedelta(hours=1))])
    admin.close()
    nowhere = Task(service_name=service, request=HttpRequest(url="http://127.0.0.1:9/"), timeout=0.5)
    async with TaskRunner(
        mode="remote", service_name=service, bootstrap_servers=bare_broker, result_grace=0.5
    ) as running:
        outcomes = []
        for _ in range(2):
            batch = await running.launch([nowhere.model_copy(update={"id": uuid.uuid4()})])
            outcomes += [r.outcome for r in await asyncio.wait_for(batch.wait(), 10)]
            await running.close(batch)

    assert outcomes == ["no_result", "no_result"]
    assert (
        caplog.text.count(
            "trs-control does not exist: create it with 'trs topics init'; until it is read, "
            "a reply topic deleted by 'trs topics gc' is not let go of first"
        )
        == 1
    )


async def test_the_reply_path_survives_repeated_deletions_close_races_and_short_batches(
    cluster: Cluster, target: HttpTarget
) -> None:
    command = [
        sys.executable, "-m", "tests.reliability.reply_path_hunt",
        "--bootstrap", cluster.bootstrap,
        "--service", cluster.service,
        "--target", target.http,
        "--rounds", str(HUNT_ROUNDS),
    ]  # fmt: skip
    hunt = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert hunt.returncode == 0, f"the hunt died with {hunt.returncode}:\n{hunt.stderr[-3000:]}"
    report = json.loads(hunt.stdout.strip().splitlines()[-1])
    rounds_of_each = HUNT_ROUNDS // 5

    assert report["thread_failures"] == []
    assert report["outcomes"]["short"] == {"response": 5 * rounds_of_each}
    assert sum(report["outcomes"]["cut"].values()) == 5 * rounds_of_each
    assert set(report["outcomes"]["cut"]) <= {"cancelled", "response"}
    assert report["outcomes"]["gc"] == {"response": rounds_of_each, "no_result": 3 * rounds_of_each}
    assert set(report["victims"]) <= set(report["deleted"])
    assert sum(report["outcomes"]["teardown"].values()) == rounds_of_each
    assert set(report["outcomes"]["teardown"]) <= {"cancelled", "response"}
    assert report["outcomes"]["left"] == {"response": 10 * rounds_of_each}

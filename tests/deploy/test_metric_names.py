"""Every metric the alerting rules and the dashboard read is one a running worker exposes: rename a
metric and this fails. One worker runs one task on the test broker, so labelled series exist too."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from producer.topics import TopicAdmin
from shared.wire import request_topic
from tests.deploy.manifests import DEPLOY
from tests.deploy.promql import grafana_query, label_values_metric, metric_names
from tests.http_target import HttpTarget
from tests.kafka_io import new_test_batch, produce, read_results
from tests.waiting import wait_until
from tests.worker_process import WorkerProcess, running_workers

pytestmark = pytest.mark.integration

#: Series that come from elsewhere: Prometheus' own scrape health and kube-state-metrics.
FROM_ELSEWHERE = {"up", "kube_deployment_status_replicas_ready", "kube_deployment_status_replicas_unavailable"}


def _rules() -> list[dict[str, str]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _used_by_rules() -> set[str]:
    return set().union(*(metric_names(rule["expr"]) for rule in _rules()))


def _used_by_dashboard() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "trs-worker.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    names = set().union(*(metric_names(grafana_query(expr)) for expr in exprs))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric = label_values_metric(variable["query"]["query"])
            assert metric is not None, variable["name"]
            names.add(metric)
    return names


def _exposed(worker: WorkerProcess) -> set[str]:
    return {sample.split("{", 1)[0] for sample in worker.metrics()}


@pytest.fixture(scope="module")
def exposed(kafka_bootstrap: str, target: HttpTarget, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The sample names on the /metrics of a worker that has run one task."""
    admin = TopicAdmin({"bootstrap.servers": kafka_bootstrap})
    service = f"metrics-{uuid.uuid4().hex[:8]}"
    admin.init([service], partitions=1)
    batch = new_test_batch(admin, service)
    log_dir: Path = tmp_path_factory.mktemp("metrics-worker")
    with running_workers(kafka_bootstrap, log_dir, group_id=f"workers-{service}", topics=[request_topic(service)]) as (
        worker,
    ):
        produce(kafka_bootstrap, request_topic(service), [batch.envelope(f"{target.http}/ok")])
        (reply,) = read_results(kafka_bootstrap, batch.reply_topic, 1)
        assert reply.result.response is not None
        # The lag gauge comes with the worker's next look at its partitions.
        wait_until(
            lambda: "trs_worker_partition_lag_messages" in _exposed(worker), what="the lag of the worker's partition"
        )
        names = _exposed(worker)
    admin.delete([batch.reply_topic])
    return names


def test_the_worker_exposes_what_the_checks_below_rely_on(exposed: set[str]) -> None:
    assert {
        "trs_worker_tasks_total",
        "trs_http_request_duration_seconds_bucket",
        "trs_worker_partition_lag_messages",
    } <= exposed
    assert not {name for name in FROM_ELSEWHERE if name.startswith("trs")}


def test_every_metric_the_rules_read_is_exposed_by_the_worker(exposed: set[str]) -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}

    missing = _used_by_rules() - exposed - recorded - FROM_ELSEWHERE

    assert not missing, f"rules read metrics no worker exposes: {sorted(missing)}"


def test_every_metric_the_dashboard_reads_is_exposed_by_the_worker(exposed: set[str]) -> None:
    missing = _used_by_dashboard() - exposed - FROM_ELSEWHERE

    assert not missing, f"the dashboard reads metrics no worker exposes: {sorted(missing)}"


def test_a_renamed_metric_would_be_caught(exposed: set[str]) -> None:
    renamed = metric_names("sum(rate(trs_worker_dead_letters_total[5m]))")

    assert renamed - exposed - FROM_ELSEWHERE == {"trs_worker_dead_letters_total"}

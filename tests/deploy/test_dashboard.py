"""deploy/grafana/trs-worker.json imports into any Grafana: a schema version, a datasource variable
and no data source named by UID; every query is PromQL, and the panels cover what the issue lists."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.manifests import DEPLOY
from tests.deploy.promql import grafana_query, label_values_metric, metric_names

DASHBOARD = DEPLOY / "grafana" / "trs-worker.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _exprs() -> Iterator[str]:
    for panel in _panels():
        for target in panel["targets"]:
            yield target["expr"]


def _uids(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every uid in the dashboard, with the path of the object holding it ("" for the dashboard)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "uid":
                yield path, value
            yield from _uids(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _uids(item, f"{path}[{index}]")


def test_the_dashboard_is_importable() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}

    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["id"] is None
    assert dashboard["uid"] == "trs-worker"
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_no_data_source_is_named_by_uid() -> None:
    uids = list(_uids(_dashboard()))

    assert ("", "trs-worker") in uids
    assert {value for path, value in uids if path} == {"${datasource}"}
    for panel in _panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _dashboard()["panels"]
    cells: dict[tuple[int, int], str] = {}

    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("expr", list(_exprs()))
def test_every_query_parses_as_promql(expr: str) -> None:
    assert metric_names(grafana_query(expr))


def test_the_panels_show_what_an_operator_watches() -> None:
    shown = set().union(*(metric_names(grafana_query(expr)) for expr in _exprs()))

    assert {
        "trs_worker_tasks_total",  # throughput by outcome
        "trs_http_request_duration_seconds_bucket",  # latency percentiles
        "trs_worker_tasks_inflight",
        "trs_worker_partition_lag_messages",
        "trs_worker_partitions_paused",
        "trs_worker_dlq_records_total",
        "trs_worker_produce_errors_total",
        "trs_http_retries_total",
        "kube_deployment_status_replicas_ready",  # ready pods
    } <= shown
    quantiles = [e for e in _exprs() if e.startswith("histogram_quantile(")]
    assert [q.split(",")[0] for q in quantiles] == [f"histogram_quantile({q}" for q in ("0.5", "0.9", "0.99")]


def test_the_variables_query_worker_metrics() -> None:
    queries = [v for v in _dashboard()["templating"]["list"] if v["type"] == "query"]

    assert queries
    for variable in queries:
        assert label_values_metric(variable["query"]["query"]) is not None, variable["name"]

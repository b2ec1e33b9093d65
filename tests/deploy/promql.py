"""The metric names a PromQL expression reads, found by a real PromQL parser (promql-parser)."""

from __future__ import annotations

import re
from typing import Any

import promql_parser

#: Grafana's interval variables, replaced by a duration so that a dashboard query parses as PromQL.
_GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def metric_names(expr: str) -> set[str]:
    """The metric name of every selector in ``expr``; raises ``ValueError`` if it doesn't parse."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def grafana_query(expr: str) -> str:
    """A dashboard query as PromQL: Grafana's interval variables become durations."""
    for variable, duration in _GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, duration)
    return expr


def label_values_metric(query: str) -> str | None:
    """The metric of a Grafana ``label_values(metric{...}, label)`` variable query."""
    match = re.fullmatch(r"label_values\((\w+)(\{.*\})?,\s*\w+\)", query)
    return None if match is None else match.group(1)

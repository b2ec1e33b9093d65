"""Hypothesis strategies for valid TRS models."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from shared.errors import ErrorCode
from shared.models import (
    EMPTY_LABELS,
    ClientPolicy,
    HttpRequest,
    HttpResponse,
    Labels,
    ResultEnvelope,
    RetryPolicy,
    Task,
    TaskEnvelope,
    TaskError,
    TaskResult,
    TransportPolicy,
)
from shared.wire import reply_topic

TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"

header_names = st.text(TOKEN_CHARS, min_size=1, max_size=20)
header_values = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x00"), max_size=40)
#: A request header's value holds no control character but tab; a response's may.
request_header_values = st.text(st.characters(blacklist_categories=["Cs", "Cc"]) | st.just("\t"), max_size=40)
# Repeated names are likely: draw from a small pool as well as freely.
_header_names = st.one_of(st.sampled_from(["Set-Cookie", "X-Dup"]), header_names)
headers = st.lists(st.tuples(_header_names, header_values), max_size=6)
request_headers = st.lists(st.tuples(_header_names, request_header_values), max_size=6)
_label_text = st.characters(blacklist_categories=["Cs"])
labels = st.dictionaries(
    st.text(_label_text, min_size=1, max_size=20), st.text(_label_text, max_size=40), max_size=4
).map(lambda pairs: Labels(pairs) if pairs else EMPTY_LABELS)
service_names = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?\Z")
batch_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z")
urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["http", "https"]),
    st.sampled_from(["127.0.0.1:8080", "example.test", "[::1]:443", "host-1.fleet.local"]),
    st.text(string.ascii_letters + string.digits + "-._~/%?=&", max_size=30),
)

requests = st.builds(
    HttpRequest,
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    url=urls,
    headers=request_headers,
    body=st.binary(max_size=256),
)
retry_policies = st.builds(
    RetryPolicy,
    retries=st.integers(0, 10),
    backoff_initial=st.floats(0.001, 1.0),
    backoff_max=st.floats(1.0, 60.0),
)
transport_policies = st.builds(
    TransportPolicy,
    max_connections=st.none() | st.integers(1, 10_000),
    max_connections_per_host=st.none() | st.integers(1, 1000),
    keep_alive=st.booleans(),
)
tasks = st.builds(
    Task,
    service_name=service_names,
    request=requests,
    timeout=st.floats(0.001, 3600.0),
    policy=st.builds(ClientPolicy, retry=retry_policies, transport=transport_policies),
    ignore=st.booleans(),
    labels=labels,
)
responses = st.builds(
    HttpResponse, status_code=st.integers(100, 599), headers=headers.map(tuple), body=st.binary(max_size=512)
)
errors = st.sampled_from(list(ErrorCode)).map(TaskError.of)
results = st.one_of(
    st.builds(TaskResult, response=responses, error=st.none(), attempts=st.integers(0, 10), labels=labels),
    st.builds(TaskResult, response=st.none(), error=errors, attempts=st.integers(0, 10), labels=labels),
)
deadlines = st.integers(-3600, 86_400).map(lambda s: datetime.now(UTC) + timedelta(seconds=s))


@st.composite
def task_envelopes(draw: st.DrawFn) -> TaskEnvelope:
    task = draw(tasks)
    batch = draw(batch_ids)
    return TaskEnvelope(
        batch_id=batch, reply_topic=reply_topic(task.service_name, batch), deadline=draw(deadlines), task=task
    )


result_envelopes = st.builds(ResultEnvelope, batch_id=batch_ids, result=results, worker=st.none() | header_names)

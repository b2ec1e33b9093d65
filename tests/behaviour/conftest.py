"""Fixtures of the behaviour suite: certificates, the loopback target and a runner per transport.

The suite is written once. ``make_runner`` is parametrized over every shipped transport, so each
test runs, with the same assertions, on each of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from producer import TaskRunner
from tests.http_target import HttpTarget, http_target

TRANSPORTS = ["pyreqwest", "httpx"]


@dataclass(frozen=True)
class Certs:
    ca: Path
    other_ca: Path
    client_cert: Path
    client_key: Path
    directory: Path


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("certs")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(directory / "ca.pem")
    other.cert_pem.write_to_path(directory / "other-ca.pem")
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_and_cert_chain_pem.write_to_path(directory / "server.pem")
    client = ca.issue_cert("client@trs.test")
    client.cert_chain_pems[0].write_to_path(directory / "client.pem")
    client.private_key_pem.write_to_path(directory / "client.key")
    return Certs(
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        directory=directory,
    )


@pytest.fixture(scope="session")
def target(certs: Certs) -> Iterator[HttpTarget]:
    with http_target(certs.directory) as running:
        yield running


RunnerFactory = Callable[..., contextlib.AbstractAsyncContextManager[TaskRunner]]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_runner(transport: str) -> RunnerFactory:
    """``async with make_runner(**options) as runner``: a runner on the transport under test."""

    @contextlib.asynccontextmanager
    async def factory(**options: Any) -> AsyncIterator[TaskRunner]:
        options.setdefault("service_name", "behaviour")
        async with TaskRunner(mode="local", transport=transport, **options) as runner:
            yield runner

    return factory

"""Fixtures of the behaviour suite: a runner per mode and transport (the target and certificates
are in tests/conftest.py).

The suite is written once. ``make_runner`` is parametrized over local mode on every shipped
transport and over remote mode, so each test runs, with the same assertions, on each of them.

Remote mode runs on the default transport only: the transport is the worker's setting, and the
engine it runs is the one local mode runs, which the local flavours cover on every transport.
The worker-side options a test asks for (``tls``, ``max_response_bytes``, ``allowed_targets``)
select a worker started with those flags (see tests/remote_pools.py); ``max_inflight`` is the
runner's own limit in both modes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from producer import TaskRunner
from tests.remote_pools import RemotePools, worker_flags

FLAVOURS = [("local", "pyreqwest"), ("local", "httpx"), ("remote", "pyreqwest")]

RunnerFactory = Callable[..., contextlib.AbstractAsyncContextManager[TaskRunner]]


@pytest.fixture(params=FLAVOURS, ids=lambda f: f"{f[0]}-{f[1]}" if f[0] == "local" else "remote")
def flavour(request: pytest.FixtureRequest) -> tuple[str, str]:
    mode_and_transport: tuple[str, str] = request.param
    return mode_and_transport


@pytest.fixture
def mode(flavour: tuple[str, str]) -> str:
    return flavour[0]


@pytest.fixture
def transport(flavour: tuple[str, str]) -> str:
    return flavour[1]


@pytest.fixture
def make_runner(flavour: tuple[str, str], request: pytest.FixtureRequest) -> RunnerFactory:
    """``async with make_runner(**options) as runner``: a runner of the flavour under test."""
    mode, transport = flavour
    if mode == "local":

        @contextlib.asynccontextmanager
        async def local(**options: Any) -> AsyncIterator[TaskRunner]:
            options.setdefault("service_name", "behaviour")
            async with TaskRunner(mode="local", transport=transport, **options) as runner:
                yield runner

        return local

    # Only remote tests start the broker and the workers.
    pools: RemotePools = request.getfixturevalue("remote_pools")

    @contextlib.asynccontextmanager
    async def remote(**options: Any) -> AsyncIterator[TaskRunner]:
        flags = worker_flags(options)
        options.pop("service_name", None)
        async with TaskRunner(
            mode="remote", service_name=pools.service(flags), bootstrap_servers=pools.bootstrap, **options
        ) as runner:
            yield runner

    return remote

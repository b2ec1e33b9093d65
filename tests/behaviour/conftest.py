"""Fixtures of the behaviour suite: a runner per transport (the target and certificates are in tests/conftest.py).

The suite is written once. ``make_runner`` is parametrized over every shipped transport, so each
test runs, with the same assertions, on each of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from producer import TaskRunner

TRANSPORTS = ["pyreqwest", "httpx"]


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

"""The event loop every TRS entry point runs on: uvloop where it is installed, else asyncio's own."""

from __future__ import annotations

import asyncio

__all__ = ["event_loop_runner"]


def event_loop_runner() -> asyncio.Runner:
    """An ``asyncio.Runner`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)

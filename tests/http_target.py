"""A real HTTP(S) server on loopback for behaviour tests, scripted by its URL.

It runs aiohttp in its own thread with its own event loop, so it keeps serving whatever the
test's loop is doing, and worker subprocesses can reach it too.

Routes:
    /ok                      200 "ok"
    /status/{code}?key=K&times=N   ``code`` for the first N hits of key K, then 200 (N defaults to forever)
    /retry-after?key=K&after=S&times=N   429 with ``Retry-After: S`` for the first N hits, then 200
    /sleep?s=S               sleeps S seconds, then 200; counts open and finished requests
    /bytes?n=N               a body of N bytes
    /echo                    JSON of the method, headers (as a list) and body (base64)
    /cookies                 two Set-Cookie headers
    /hits/{key}              how many times key K was hit, as text
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web

from producer.embedded_broker import free_port


@dataclass
class TargetState:
    hits: Counter[str] = field(default_factory=Counter)
    sleeping: int = 0
    slept_to_end: int = 0
    sleep_cancelled: int = 0
    peak_sleeping: int = 0


def _app(state: TargetState) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _count(request: web.Request) -> tuple[int, int]:
        key = request.query.get("key", request.path)
        state.hits[key] += 1
        times = int(request.query.get("times", "1000000000"))
        return state.hits[key], times

    async def status(request: web.Request) -> web.Response:
        hit, times = _count(request)
        code = int(request.match_info["code"])
        return web.Response(status=code if hit <= times else 200, text=f"hit {hit}")

    async def retry_after(request: web.Request) -> web.Response:
        hit, times = _count(request)
        if hit <= times:
            return web.Response(status=429, headers={"Retry-After": request.query["after"]}, text="slow down")
        return web.Response(text=f"hit {hit}")

    async def sleep(request: web.Request) -> web.Response:
        _count(request)
        state.sleeping += 1
        state.peak_sleeping = max(state.peak_sleeping, state.sleeping)
        try:
            await asyncio.sleep(float(request.query.get("s", "1")))
            state.slept_to_end += 1
        except asyncio.CancelledError:
            state.sleep_cancelled += 1
            raise
        finally:
            state.sleeping -= 1
        return web.Response(text="slept")

    async def many_bytes(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.query["n"]))

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        payload = {
            "method": request.method,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": base64.b64encode(body).decode(),
        }
        return web.Response(text=json.dumps(payload), content_type="application/json")

    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="cookies")
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def hits(request: web.Request) -> web.Response:
        return web.Response(text=str(state.hits[request.match_info["key"]]))

    app = web.Application(handler_args={"handler_cancellation": True})
    app.router.add_route("*", "/ok", ok)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/retry-after", retry_after)
    app.router.add_route("*", "/sleep", sleep)
    app.router.add_route("*", "/bytes", many_bytes)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/cookies", cookies)
    app.router.add_get("/hits/{key}", hits)
    return app


@dataclass
class HttpTarget:
    """Base URLs of the running servers and their shared state."""

    http: str
    https: str
    mtls: str
    state: TargetState


@contextlib.contextmanager
def http_target(server_tls: ssl.SSLContext, mtls: ssl.SSLContext) -> Iterator[HttpTarget]:
    """Serve the routes over HTTP, HTTPS and HTTPS-with-client-certificates on loopback."""
    state = TargetState()
    loop = asyncio.new_event_loop()
    ports = [free_port() for _ in range(3)]
    started = threading.Event()
    runner = web.AppRunner(_app(state), access_log=None, shutdown_timeout=0.5)

    async def start() -> None:
        await runner.setup()
        for port, context in zip(ports, [None, server_tls, mtls], strict=True):
            site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context, backlog=4096)
            await site.start()
        started.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="http-target", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the HTTP target did not start")
    try:
        yield HttpTarget(
            http=f"http://127.0.0.1:{ports[0]}",
            https=f"https://127.0.0.1:{ports[1]}",
            mtls=f"https://127.0.0.1:{ports[2]}",
            state=state,
        )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

"""A real HTTP(S) server on loopback for behaviour tests, scripted by its URL.

It runs aiohttp in a child process, so it neither shares the interpreter lock with the client
under test nor depends on the test's event loop; tests read its counters over HTTP.

Routes:
    /ok                      200 "ok"
    /status/{code}?key=K&times=N   ``code`` for the first N hits of key K, then 200 (N defaults to forever)
    /retry-after?key=K&after=S&times=N   429 with ``Retry-After: S`` for the first N hits, then 200
    /sleep?s=S               sleeps S seconds, then 200; counts open and finished requests
    /bytes?n=N               a body of N bytes
    /chunked?n=N             a chunked body (no Content-Length) of N bytes, sent in 64 KiB chunks
    /drip?s=S                headers and the first byte of the body at once, the last byte S seconds later
    /echo                    JSON of the method, headers (as a list) and body (base64)
    /cookies                 two Set-Cookie headers
    /hits/{key}              how many times key K was hit, as text
    /peak/{key}              the most /sleep requests of key K that were open at once
    /arrivals/{key}          when each request of key K arrived, as a JSON list of monotonic seconds
    /sleeping/{key}          how many /sleep requests of key K are open now
    /stats                   JSON counters of the /sleep route
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiohttp import web

from producer.dev.embedded_broker import free_port, with_parent_death_signal

#: Seconds the child may take to serve: beside parallel pytest processes on a busy machine its imports may take 15.
STARTUP_TIMEOUT = 60


@dataclass
class TargetState:
    hits: Counter[str] = field(default_factory=Counter)
    sleeping: int = 0
    slept_to_end: int = 0
    sleep_cancelled: int = 0
    peak_sleeping: int = 0
    sleeping_by_key: Counter[str] = field(default_factory=Counter)
    peak_by_key: Counter[str] = field(default_factory=Counter)
    arrivals: dict[str, list[float]] = field(default_factory=dict)


def _app(state: TargetState) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _count(request: web.Request) -> tuple[int, int]:
        key = request.query.get("key", request.path)
        state.hits[key] += 1
        state.arrivals.setdefault(key, []).append(time.monotonic())
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
        key = request.query.get("key", "")
        state.sleeping += 1
        state.peak_sleeping = max(state.peak_sleeping, state.sleeping)
        state.sleeping_by_key[key] += 1
        state.peak_by_key[key] = max(state.peak_by_key[key], state.sleeping_by_key[key])
        try:
            await asyncio.sleep(float(request.query.get("s", "1")))
            state.slept_to_end += 1
        except asyncio.CancelledError:
            state.sleep_cancelled += 1
            raise
        finally:
            state.sleeping -= 1
            state.sleeping_by_key[key] -= 1
        return web.Response(text="slept")

    async def many_bytes(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.query["n"]))

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        remaining = int(request.query["n"])
        chunk = b"x" * 65536
        while remaining > 0:
            await response.write(chunk[:remaining])
            remaining -= len(chunk)
        await response.write_eof()
        return response

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "2"})
        await response.prepare(request)
        await response.write(b"a")
        await asyncio.sleep(float(request.query.get("s", "1")))
        await response.write(b"b")
        await response.write_eof()
        return response

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

    async def peak(request: web.Request) -> web.Response:
        return web.Response(text=str(state.peak_by_key[request.match_info["key"]]))

    async def sleeping(request: web.Request) -> web.Response:
        return web.Response(text=str(state.sleeping_by_key[request.match_info["key"]]))

    async def arrivals(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(state.arrivals.get(request.match_info["key"], [])))

    async def stats(request: web.Request) -> web.Response:
        counters = {k: v for k, v in asdict(state).items() if isinstance(v, int)}
        return web.Response(text=json.dumps(counters), content_type="application/json")

    app = web.Application(handler_args={"handler_cancellation": True})
    app.router.add_route("*", "/ok", ok)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/retry-after", retry_after)
    app.router.add_route("*", "/sleep", sleep)
    app.router.add_route("*", "/bytes", many_bytes)
    app.router.add_route("*", "/chunked", chunked)
    app.router.add_route("*", "/drip", drip)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/cookies", cookies)
    app.router.add_get("/hits/{key}", hits)
    app.router.add_get("/stats", stats)
    app.router.add_get("/peak/{key}", peak)
    app.router.add_get("/sleeping/{key}", sleeping)
    app.router.add_get("/arrivals/{key}", arrivals)
    return app


@dataclass
class HttpTarget:
    """Base URLs of the running servers."""

    http: str
    #: HTTPS with a certificate from the test CA.
    https: str
    #: HTTPS that also requires a client certificate from the test CA.
    mtls: str
    #: HTTPS with a certificate from another CA, which no runner trusts.
    untrusted: str

    def stats(self) -> dict[str, int]:
        """The server's counters: sleeping, slept_to_end, sleep_cancelled, peak_sleeping."""
        with urllib.request.urlopen(f"{self.http}/stats", timeout=5) as response:
            data: dict[str, int] = json.load(response)
            return data

    def hits(self, key: str) -> int:
        """How many requests key ``key`` got."""
        with urllib.request.urlopen(f"{self.http}/hits/{key}", timeout=5) as response:
            return int(response.read())

    def sleeping(self, key: str) -> int:
        """How many ``/sleep`` requests of key ``key`` are open now."""
        with urllib.request.urlopen(f"{self.http}/sleeping/{key}", timeout=5) as response:
            return int(response.read())

    def arrivals(self, key: str) -> list[float]:
        """When each request of key ``key`` arrived, in the order they did (monotonic seconds)."""
        with urllib.request.urlopen(f"{self.http}/arrivals/{key}", timeout=5) as response:
            return [float(t) for t in json.load(response)]

    def peak(self, key: str) -> int:
        """The most ``/sleep`` requests of key ``key`` that were open at once."""
        with urllib.request.urlopen(f"{self.http}/peak/{key}", timeout=5) as response:
            return int(response.read())


@contextlib.contextmanager
def http_target(cert_dir: Path) -> Iterator[HttpTarget]:
    """Serve the routes in a child process over HTTP, HTTPS, HTTPS with client certificates, and
    HTTPS with a certificate from an untrusted CA.

    ``cert_dir`` holds ``server.pem`` (key and chain), ``ca.pem``, the CA that client
    certificates must chain to, and ``other-server.pem``, signed by another CA.
    """
    ports = [free_port() for _ in range(4)]
    command = [sys.executable, "-m", "tests.http_target", str(cert_dir), *map(str, ports)]
    process = subprocess.Popen(with_parent_death_signal(command), cwd=Path(__file__).resolve().parents[1])
    target = HttpTarget(
        http=f"http://127.0.0.1:{ports[0]}",
        https=f"https://127.0.0.1:{ports[1]}",
        mtls=f"https://127.0.0.1:{ports[2]}",
        untrusted=f"https://127.0.0.1:{ports[3]}",
    )
    with serving(process, target.stats, "the HTTP target"):
        yield target


@contextlib.contextmanager
def serving(process: subprocess.Popen[bytes], probe: Callable[[], object], name: str) -> Iterator[None]:
    """Wait until ``probe`` stops raising ``OSError`` (the child ``process`` answers), then stop the child when the
    block ends: politely first, then by force."""
    try:
        _wait_until_up(process, probe, name)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_until_up(process: subprocess.Popen[bytes], probe: Callable[[], object], name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            probe()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not start within {STARTUP_TIMEOUT} s")


async def _serve(cert_dir: Path, ports: list[int]) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_dir / "server.pem")
    mtls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cert_dir / "ca.pem"))
    mtls.load_cert_chain(cert_dir / "server.pem")
    mtls.verify_mode = ssl.CERT_REQUIRED
    untrusted = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    untrusted.load_cert_chain(cert_dir / "other-server.pem")
    runner = web.AppRunner(_app(TargetState()), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    for port, context in zip(ports, [None, server_tls, mtls, untrusted], strict=True):
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context, backlog=4096).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(Path(sys.argv[1]), [int(p) for p in sys.argv[2:6]]))

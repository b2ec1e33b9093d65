"""Bare async HTTP loops (no TRS) giving the ceiling each client library reaches on its own.

Every ``bare_*`` function GETs each URL once with at most ``concurrency`` requests in flight, reads the whole body
and returns how many answers were 2xx. Concurrency comes from a fixed pool of worker coroutines sharing one
iterator, so the harness itself adds no per-request task, semaphore or future.

Try it against a local nginx::

    python -m benchmarks.bare_clients --client pyreqwest --requests 20000 --concurrency 100
    python -m benchmarks.bare_clients --client pyreqwest --requests 100000 --concurrency 16000 --sleep 2 --addresses 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from benchmarks.nginx_target import loopback_addresses, nginx_target, spread_urls

if TYPE_CHECKING:
    from pyreqwest.response import Response

T = TypeVar("T")

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
# File descriptors the process needs besides its client sockets: stdio, the event loop, runtime threads, imports.
FD_HEADROOM = 256


async def _drive(urls: list[str], concurrency: int, fetch: Callable[[str], Awaitable[bool]]) -> int:
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    pending = iter(urls)
    ok = 0
    failed = 0
    first_error: Exception | None = None

    async def worker() -> None:
        nonlocal ok, failed, first_error
        # Workers share one iterator: next() cannot interleave on a single-threaded loop, so no URL runs twice.
        for url in pending:
            try:
                success = await fetch(url)
            except Exception as exc:
                # A benchmark counts a failed request and goes on; the first cause is kept for the log.
                failed += 1
                first_error = first_error or exc
                continue
            if success:
                ok += 1

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(urls)))))
    if failed:
        logger.warning("%d requests raised; first error: %r", failed, first_error)
    return ok


async def bare_httpx(urls: list[str], concurrency: int, *, request_timeout: float = DEFAULT_TIMEOUT) -> int:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=request_timeout) as client:

        async def fetch(url: str) -> bool:
            response = await client.get(url)
            return response.is_success

        return await _drive(urls, concurrency, fetch)


async def bare_aiohttp(urls: list[str], concurrency: int, *, request_timeout: float = DEFAULT_TIMEOUT) -> int:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=request_timeout)
    ) as session:

        async def fetch(url: str) -> bool:
            async with session.get(url) as response:
                await response.read()
                return 200 <= response.status < 300

        return await _drive(urls, concurrency, fetch)


class BodyTooLarge(ValueError):
    """A response body over the cap ``read_capped`` reads up to."""


async def read_capped(response: Response, max_bytes: int) -> bytes:
    """A streamed pyreqwest response's body read as TRS's contract reads it: refused once over ``max_bytes``, in
    one read when its length is declared, else chunk by chunk."""
    length = response.get_header("content-length")
    if (length is not None) and length.isdigit():
        if int(length) > max_bytes:
            raise BodyTooLarge(f"body of {length} bytes, over {max_bytes}")
        return bytes(await response.bytes())
    chunks = bytearray()
    while (chunk := await response.body_reader.read_chunk()) is not None:
        chunks += chunk
        if len(chunks) > max_bytes:
            raise BodyTooLarge(f"body over {max_bytes} bytes")
    return bytes(chunks)


#: What the contract loop keeps of each response: status, header pairs, body.
Kept = tuple[int, list[tuple[str, str]], bytes]


@contextlib.asynccontextmanager
async def contract_fetcher(
    concurrency: int, kept: list[Kept], *, request_timeout: float, max_body_bytes: int
) -> AsyncIterator[Callable[[str], Awaitable[bool]]]:
    """A pyreqwest fetch that does what TRS's contract asks of each request (a streamed read capped at
    ``max_body_bytes``, a per-request timeout, status, headers and body kept), appending each result to ``kept``;
    it answers whether the status was 2xx."""
    from pyreqwest.client import ClientBuilder

    timeout = timedelta(seconds=request_timeout)
    async with ClientBuilder().max_connections(concurrency).tcp_nodelay(True).build() as client:

        async def fetch_contract(url: str) -> bool:
            async with client.get(url).timeout(timeout).build_streamed() as response:
                body = await read_capped(response, max_body_bytes)
                kept.append((response.status, list(response.headers.items()), body))
                return 200 <= response.status < 300

        yield fetch_contract


async def bare_pyreqwest(urls: list[str], concurrency: int, *, request_timeout: float = DEFAULT_TIMEOUT) -> int:
    from pyreqwest.client import ClientBuilder

    builder = ClientBuilder().max_connections(concurrency).timeout(timedelta(seconds=request_timeout))
    async with builder.build() as client:

        async def fetch(url: str) -> bool:
            response = await client.get(url).build().send()
            await response.bytes()
            return 200 <= response.status < 300

        return await _drive(urls, concurrency, fetch)


CLIENTS: dict[str, Callable[..., Coroutine[Any, Any, int]]] = {
    "httpx": bare_httpx,
    "aiohttp": bare_aiohttp,
    "pyreqwest": bare_pyreqwest,
}


def run_on_loop(coro_factory: Callable[[], Coroutine[Any, Any, T]], *, use_uvloop: bool = True) -> T:
    """Run ``coro_factory()`` to completion on a fresh loop: uvloop when installed (and wanted), else asyncio."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro_factory())
    return asyncio.run(coro_factory())


def loop_name(*, use_uvloop: bool = True) -> str:
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "asyncio"
        return "uvloop"
    return "asyncio"


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux but bytes on macOS.
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def raise_nofile_limit(needed: int) -> int:
    """Lift the soft open-files limit towards the hard one; return the resulting soft limit.

    Raises ``RuntimeError`` when even the hard limit is below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise RuntimeError(f"need {needed} open files but the hard limit is {hard}; lower --concurrency")
    return soft


def _main() -> None:
    parser = argparse.ArgumentParser(description="Bare client throughput against a local nginx.")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="pyreqwest")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--sleep", type=float, default=None, help="GET /sleep with this server-side delay (seconds)")
    parser.add_argument("--addresses", type=int, default=1, help="spread over this many 127.0.0.x addresses")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per-request timeout (seconds)")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    raise_nofile_limit(args.concurrency + FD_HEADROOM)
    use_uvloop = not args.no_uvloop
    fn = CLIENTS[args.client]
    path = "/" if args.sleep is None else "/sleep"
    with nginx_target(addresses=loopback_addresses(args.addresses), sleep_seconds=args.sleep) as bases:
        urls = spread_urls(bases, path, args.requests)
        start = time.perf_counter()
        ok = run_on_loop(lambda: fn(urls, args.concurrency, request_timeout=args.timeout), use_uvloop=use_uvloop)
        elapsed = time.perf_counter() - start
    print(
        f"{args.client} on {loop_name(use_uvloop=use_uvloop)}: {args.requests} GET {path} "
        f"concurrency={args.concurrency} addresses={args.addresses} -> ok={ok} in {elapsed:.2f}s "
        f"= {args.requests / elapsed:,.0f} req/s, peak RSS {peak_rss_mib():.0f} MiB"
    )
    if ok != args.requests:
        sys.exit(1)


if __name__ == "__main__":
    _main()

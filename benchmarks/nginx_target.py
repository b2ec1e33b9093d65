"""Run Debian's nginx as a throwaway loopback HTTP target for client benchmarks.

Usage::

    with nginx_target(addresses=loopback_addresses(8), sleep_seconds=2) as bases:
        urls = spread_urls(bases, "/sleep", 100_000)

``/`` answers a tiny static body; ``/sleep`` (only when ``sleep_seconds`` is given) answers after a delay via the
echo module, so a client can hold many idle in-flight requests without any Python on the server side.
"""

from __future__ import annotations

import ipaddress
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NGINX_BINARY = "/usr/sbin/nginx"
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
INSTALL_HINT = "apt-get install -y nginx libnginx-mod-http-echo"

DEFAULT_RLIMIT_NOFILE = 20_000
DEFAULT_WORKER_CONNECTIONS = 19_000
# Linux caps every listen queue at net.core.somaxconn; asking for more just means "as large as allowed".
LISTEN_BACKLOG = 65_535


class NginxNotAvailableError(RuntimeError):
    pass


class NginxStartError(RuntimeError):
    pass


def loopback_addresses(count: int, *, port: int = 0, first: int = 1) -> list[tuple[str, int]]:
    """``count`` distinct 127.0.0.x addresses; port 0 lets ``nginx_target`` pick a free port for each."""
    if count < 1 or first + count - 1 > 254:
        raise ValueError(f"cannot make {count} addresses starting at 127.0.0.{first}")
    return [(f"127.0.0.{first + i}", port) for i in range(count)]


def spread_urls(base_urls: list[str], path: str, count: int) -> list[str]:
    """``count`` URLs for ``path``, round-robin over ``base_urls`` so connections spread evenly."""
    if not base_urls:
        raise ValueError("no base URLs")
    return [base_urls[i % len(base_urls)] + path for i in range(count)]


def _check_loopback(host: str) -> None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"{host!r} is not an IP address; only loopback IP literals are allowed") from exc
    if not ip.is_loopback:
        raise ValueError(f"{host} is not a loopback address")


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _listen_spec(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _base_url(host: str, port: int) -> str:
    return f"http://{_listen_spec(host, port)}"


def _format_seconds(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def render_config(
    prefix: Path,
    addresses: list[tuple[str, int]],
    *,
    body: str,
    sleep_seconds: float | None,
    rlimit_nofile: int,
    worker_connections: int,
    master_process: bool,
) -> str:
    listens = "\n".join(f"        listen {_listen_spec(h, p)} backlog={LISTEN_BACKLOG};" for h, p in addresses)
    escaped_body = body.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    load_echo = f"load_module {ECHO_MODULE};\n" if sleep_seconds is not None else ""
    sleep_location = (
        f"""
        location = /sleep {{
            echo_sleep {_format_seconds(sleep_seconds)};
            echo ok;
        }}
"""
        if sleep_seconds is not None
        else ""
    )
    return f"""{load_echo}daemon off;
master_process {"on" if master_process else "off"};
worker_processes 1;
worker_rlimit_nofile {rlimit_nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections {worker_connections};
    multi_accept on;
    accept_mutex off;
}}

http {{
    access_log off;
    server_tokens off;
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    tcp_nodelay on;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    server {{
{listens}
        location = / {{
            return 200 "{escaped_body}";
        }}
{sleep_location}    }}
}}
"""


def _probe(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _raise_child_nofile(pid: int, wanted: int) -> None:
    """With ``master_process off`` nginx ignores ``worker_rlimit_nofile``, so lift the soft limit from outside."""
    prlimit = getattr(resource, "prlimit", None)
    if prlimit is None:
        return
    soft, hard = prlimit(pid, resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        prlimit(pid, resource.RLIMIT_NOFILE, (target, hard))


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is not None:
        return
    # SIGTERM is nginx's fast shutdown: it drops in-flight /sleep requests instead of waiting them out.
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def nginx_target(
    *,
    addresses: list[tuple[str, int]] | None = None,
    sleep_seconds: float | None = None,
    body: str = "ok\n",
    rlimit_nofile: int = DEFAULT_RLIMIT_NOFILE,
    worker_connections: int = DEFAULT_WORKER_CONNECTIONS,
    master_process: bool = False,
    startup_timeout: float = 10.0,
    nginx_binary: str = NGINX_BINARY,
) -> Iterator[list[str]]:
    """Start nginx on loopback ``addresses`` and yield one base URL per address (e.g. ``http://127.0.0.1:41234``).

    A port of 0 picks a free port. ``sleep_seconds`` enables ``/sleep`` (needs the echo module). nginx is stopped
    when the block exits, also on exceptions.

    ``master_process`` defaults to off: throughput measured the same either way, and a single process is one pid to
    signal, with no worker that setuid()s to ``nobody`` when run as root.
    """
    if not Path(nginx_binary).is_file():
        raise NginxNotAvailableError(f"{nginx_binary} not found; install it with: {INSTALL_HINT}")
    if sleep_seconds is not None:
        if sleep_seconds < 0:
            raise ValueError("sleep_seconds must be >= 0")
        if not Path(ECHO_MODULE).is_file():
            raise NginxNotAvailableError(f"{ECHO_MODULE} not found; /sleep needs it: {INSTALL_HINT}")
    requested = addresses if addresses is not None else [("127.0.0.1", 0)]
    if not requested:
        raise ValueError("addresses must not be empty")
    for host, _ in requested:
        _check_loopback(host)
    resolved = [(host, port or _free_port(host)) for host, port in requested]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"duplicate listen addresses: {resolved}")
    if worker_connections + len(resolved) + 16 > rlimit_nofile:
        raise ValueError("worker_connections plus listen sockets must stay below rlimit_nofile")

    prefix = Path(tempfile.mkdtemp(prefix="trs-nginx-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        conf = prefix / "nginx.conf"
        conf.write_text(
            render_config(
                prefix,
                resolved,
                body=body,
                sleep_seconds=sleep_seconds,
                rlimit_nofile=rlimit_nofile,
                worker_connections=worker_connections,
                master_process=master_process,
            )
        )
        error_log = prefix / "error.log"
        stderr_path = prefix / "stderr.log"
        # -e keeps nginx away from the compiled-in /var/log/nginx path before it has read our config.
        cmd = [nginx_binary, "-c", str(conf), "-p", str(prefix), "-e", str(error_log)]
        # A file rather than a pipe, so a chatty nginx can never block on a full pipe nobody drains.
        with stderr_path.open("wb") as stderr_file:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr_file)
        if not master_process:
            _raise_child_nofile(proc.pid, rlimit_nofile)

        deadline = time.monotonic() + startup_timeout
        pending = list(resolved)
        while pending:
            if proc.poll() is not None:
                logs = "".join(p.read_text(errors="replace") for p in (stderr_path, error_log) if p.exists())
                raise NginxStartError(f"nginx exited with {proc.returncode}:\n{logs}")
            if time.monotonic() > deadline:
                raise NginxStartError(f"nginx did not answer on {pending} within {startup_timeout}s")
            pending = [(h, p) for h, p in pending if not _probe(h, p, timeout=0.5)]
            if pending:
                time.sleep(0.02)
        yield [_base_url(h, p) for h, p in resolved]
    finally:
        if proc is not None:
            _stop(proc, timeout=10.0)
        shutil.rmtree(prefix, ignore_errors=True)


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Run the benchmark nginx target in the foreground.")
    parser.add_argument("--addresses", type=int, default=1, help="number of 127.0.0.x addresses")
    parser.add_argument("--sleep", type=float, default=None, help="enable /sleep with this delay in seconds")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to keep serving")
    args = parser.parse_args()
    with nginx_target(addresses=loopback_addresses(args.addresses), sleep_seconds=args.sleep) as bases:
        print("\n".join(bases), flush=True)
        time.sleep(args.seconds)


if __name__ == "__main__":
    _main()

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from hypothesis import settings

from producer import HttpRequest, Task, TlsConfig, run
from producer.shared_producer import close_shared_producers
from producer.topics import TopicAdmin
from tests.broker import kafka_broker
from tests.http_target import HttpTarget, http_target
from tests.remote_pools import RemotePools, worker_flags

# Hypothesis's default 200 ms limit per example is a timed assertion: on a loaded machine it fails
# correct code (it did, once each, for test_offsets and test_wire_roundtrip), so no property test has one.
settings.register_profile("trs", deadline=None)
settings.load_profile("trs")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka-protocol broker, shared by the whole session."""
    with kafka_broker() as bootstrap:
        yield bootstrap
        # Before the broker goes, so the producers don't go on trying to reach it.
        close_shared_producers()


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
    other.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        directory / "other-server.pem"
    )
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


@pytest.fixture(scope="session")
def remote_pools(
    kafka_bootstrap: str, certs: Certs, target: HttpTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RemotePools]:
    """Workers for remote mode; the configurations the suite uses start together, up front.

    One batch then warms the process's shared producer, whose first send waits for a producer
    id (about half a second, see producer/shared_producer.py), so that no test's deadline
    depends on whether it happens to run first.
    """
    admin = TopicAdmin({"bootstrap.servers": kafka_bootstrap})
    admin.init()
    pools = RemotePools(kafka_bootstrap, admin, tmp_path_factory.mktemp("remote-workers"))
    ca = TlsConfig(ca_bundle=str(certs.ca))
    mtls = TlsConfig(ca_bundle=str(certs.ca), client_cert=str(certs.client_cert), client_key=str(certs.client_key))
    try:
        pools.start(
            worker_flags({}),
            worker_flags({"tls": ca}),
            worker_flags({"tls": mtls}),
            worker_flags({"tls": TlsConfig(insecure=True)}),
            worker_flags({"max_response_bytes": 1000}),
            worker_flags({"allowed_targets": ["10.0.0.0/8"]}),
        )
        warm_up = Task(service_name="warm-up", request=HttpRequest(url=f"{target.http}/ok"))
        (result,) = run([warm_up], mode="remote", service_name=pools.service(()), bootstrap_servers=kafka_bootstrap)
        assert result.ok, result
        yield pools
    finally:
        pools.close()

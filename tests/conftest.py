from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.broker import kafka_broker
from tests.http_target import HttpTarget, http_target


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka-protocol broker, shared by the whole session."""
    with kafka_broker() as bootstrap:
        yield bootstrap


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

"""Kafka SASL_SSL settings from the environment reach librdkafka exactly, and their secrets nothing else.

No broker is needed: librdkafka loads the CA, the certificate and the (encrypted) key when a
client is built, so building each client proves it accepts the properties. The clients point at
a loopback port where nothing listens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from confluent_kafka import Consumer, KafkaException, Producer
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from consumer.kafka_config import consumer_config, control_config, producer_config
from consumer.settings import WorkerSettings
from consumer.worker import WorkerConfig
from producer.dev.embedded_broker import free_port
from producer.remote import reply_consumer_config, request_producer_config
from producer.topics import TopicAdmin
from shared.settings import KafkaSettings

SASL_PASSWORD = "sasl-pw-canary-5b1f"
KEY_PASSWORD = "key-pw-canary-93c2"


@dataclass(frozen=True)
class BrokerTls:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def broker_tls(tmp_path_factory: pytest.TempPathFactory) -> BrokerTls:
    """A CA, and a client certificate whose key is encrypted with ``KEY_PASSWORD``."""
    directory = tmp_path_factory.mktemp("broker-tls")
    ca = trustme.CA()
    client = ca.issue_cert("trs-client@kafka.test")
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
    )
    ca.cert_pem.write_to_path(directory / "ca.pem")
    client.cert_chain_pems[0].write_to_path(directory / "client.pem")
    (directory / "client.key").write_bytes(encrypted)
    return BrokerTls(directory / "ca.pem", directory / "client.pem", directory / "client.key")


@pytest.fixture
def sasl_ssl_env(monkeypatch: pytest.MonkeyPatch, broker_tls: BrokerTls) -> str:
    """The environment of a SASL_SSL deployment; returns its bootstrap servers."""
    bootstrap = f"127.0.0.1:{free_port()}"
    for name, value in {
        "TRS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TRS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "TRS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "TRS_KAFKA_SASL_USERNAME": "trs-svc",
        "TRS_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "TRS_KAFKA_SSL_CA_LOCATION": str(broker_tls.ca),
        "TRS_KAFKA_SSL_CERTIFICATE_LOCATION": str(broker_tls.cert),
        "TRS_KAFKA_SSL_KEY_LOCATION": str(broker_tls.key),
        "TRS_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
    }.items():
        monkeypatch.setenv(name, value)
    return bootstrap


def expected_security(broker_tls: BrokerTls) -> dict[str, Any]:
    return {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "trs-svc",
        "sasl.password": SASL_PASSWORD,
        "ssl.ca.location": str(broker_tls.ca),
        "ssl.certificate.location": str(broker_tls.cert),
        "ssl.key.location": str(broker_tls.key),
        "ssl.key.password": KEY_PASSWORD,
    }


def security_part(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k.startswith(("security.", "sasl.", "ssl."))}


def every_client_config(kafka: KafkaSettings) -> dict[str, dict[str, Any]]:
    """The librdkafka configuration of each client TRS builds, by who builds it."""
    worker = WorkerSettings(session_timeout_ms=6000, max_poll_interval_ms=6000)
    return {
        "client request producer": request_producer_config(kafka),
        "client reply reader": {**reply_consumer_config(kafka), "group.id": "trs-client-test"},
        "client topic admin": kafka.librdkafka_config(),
        "worker group consumer": consumer_config(kafka, worker),
        "worker control consumer": control_config(kafka, worker),
        "worker producer": producer_config(kafka, worker),
    }


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def librdkafka_log() -> Iterator[Captured]:
    captured = Captured()
    logger = logging.getLogger("tests.librdkafka")
    logger.addHandler(captured)
    logger.setLevel(logging.DEBUG)
    yield captured
    logger.removeHandler(captured)


def test_sasl_ssl_settings_from_the_environment_map_exactly_to_every_client(
    sasl_ssl_env: str, broker_tls: BrokerTls
) -> None:
    configs = every_client_config(KafkaSettings())

    for who, config in configs.items():
        assert config["bootstrap.servers"] == sasl_ssl_env, who
        assert security_part(config) == expected_security(broker_tls), who


def test_librdkafka_accepts_every_client_config_and_logs_no_secret(sasl_ssl_env: str, librdkafka_log: Captured) -> None:
    # "conf" makes librdkafka log every property it was given; it must mask the secrets itself.
    logged = {"logger": logging.getLogger("tests.librdkafka"), "debug": "conf,security"}
    configs = every_client_config(KafkaSettings())

    for who, config in configs.items():
        if who == "client topic admin":
            TopicAdmin({**config, **logged}, timeout=1).close()
        elif "producer" in who:
            producer = Producer({**config, **logged})
            producer.flush(0)
        else:
            Consumer({**config, **logged}).close()

    text = "\n".join(librdkafka_log.lines)
    assert "sasl.password = [redacted]" in text
    assert "ssl.key.password = [redacted]" in text
    assert SASL_PASSWORD not in text
    assert KEY_PASSWORD not in text


def test_a_wrong_key_password_is_refused_by_librdkafka(sasl_ssl_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The key is encrypted, so that the right one loads it (the test above) shows the password reaches it.
    monkeypatch.setenv("TRS_KAFKA_SSL_KEY_PASSWORD", "not-the-password")
    config = {**request_producer_config(KafkaSettings()), "logger": logging.getLogger("tests.librdkafka")}

    with pytest.raises(KafkaException, match=r"ssl\.key\.location failed"):
        Producer(config)


def test_kafka_secrets_appear_in_no_repr_str_or_dump(sasl_ssl_env: str) -> None:
    settings = KafkaSettings(
        extra={"sasl.oauthbearer.client.secret": "oauth-canary", "socket.keepalive.enable": "true"}
    )
    config = WorkerConfig(kafka=settings)

    shown = [repr(settings), str(settings), repr(config), str(settings.model_dump()), settings.model_dump_json()]
    for text in shown:
        assert SASL_PASSWORD not in text
        assert KEY_PASSWORD not in text
    assert "oauth-canary" not in repr(settings)
    assert "'socket.keepalive.enable': 'true'" in repr(settings)
    assert "sasl_username='trs-svc'" in repr(settings)


def test_a_kafka_setting_error_does_not_echo_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRS_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
    monkeypatch.setenv("TRS_KAFKA_SECURITY_PROTOCOL", "SASL_TLS")
    monkeypatch.setenv("TRS_KAFKA_EXTRA", '{"sasl.oauthbearer.client.secret": 7}')

    with pytest.raises(ValidationError) as info:
        KafkaSettings()

    assert "security_protocol" in str(info.value)
    assert SASL_PASSWORD not in str(info.value)
    assert "SASL_TLS" not in str(info.value)
    with pytest.raises(ValidationError) as typed:
        KafkaSettings(sasl_password=[SASL_PASSWORD])
    assert SASL_PASSWORD not in str(typed.value)

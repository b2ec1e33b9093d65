from __future__ import annotations

import pytest

from consumer.settings import EngineSettings, WorkerSettings
from shared.settings import KafkaSettings


def test_kafka_settings_read_env_and_pass_security_to_librdkafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRS_KAFKA_BOOTSTRAP_SERVERS", "k1:9093,k2:9093")
    monkeypatch.setenv("TRS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TRS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("TRS_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("TRS_KAFKA_SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("TRS_KAFKA_SSL_CA_LOCATION", "/etc/ca.pem")

    settings = KafkaSettings()
    config = settings.librdkafka_config()

    assert config["bootstrap.servers"] == "k1:9093,k2:9093"
    assert config["security.protocol"] == "sasl_ssl"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "svc"
    assert config["sasl.password"] == "hunter2-secret"
    assert config["ssl.ca.location"] == "/etc/ca.pem"


def test_secrets_never_appear_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRS_KAFKA_SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("TRS_KAFKA_SSL_KEY_PASSWORD", "key-secret")

    settings = KafkaSettings()

    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in str(settings.model_dump())
    assert "key-secret" not in repr(settings)
    with pytest.raises(ValueError) as info:
        KafkaSettings(sasl_password="hunter2-secret", security_protocol="BOGUS")
    assert "hunter2-secret" not in str(info.value)


def test_test_bootstrap_variable_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRS_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("TRS_KAFKA_BOOTSTRAP", "existing:9092")

    assert KafkaSettings().bootstrap_servers == "existing:9092"


def test_engine_allowlist_splits_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRS_ENGINE_ALLOWED_TARGETS", "10.0.0.0/8, bmc.local")

    assert EngineSettings().allowed_targets == ["10.0.0.0/8", "bmc.local"]


def test_bad_worker_setting_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRS_WORKER_MAX_INFLIGHT", "0")

    with pytest.raises(ValueError, match="max_inflight"):
        WorkerSettings()


def test_bad_engine_setting_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRS_ENGINE_TRANSPORT", "curl")

    with pytest.raises(ValueError, match="transport"):
        EngineSettings()


def test_worker_poll_interval_must_cover_the_session_timeout() -> None:
    with pytest.raises(ValueError, match="max_poll_interval_ms must be at least session_timeout_ms"):
        WorkerSettings(session_timeout_ms=10_000, max_poll_interval_ms=6_000)


def test_worker_settings_read_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRS_WORKER_INSTANCE_ID", "trs-worker-0")
    monkeypatch.setenv("TRS_WORKER_TOPICS", "trs-a-http-v1-send, trs-b-http-v1-send")
    monkeypatch.setenv("TRS_WORKER_LOG_LEVEL", "debug")

    settings = WorkerSettings()

    assert settings.instance_id == "trs-worker-0"
    assert settings.topics == ["trs-a-http-v1-send", "trs-b-http-v1-send"]
    assert settings.log_level == "DEBUG"

"""``trs-worker``'s flags, environment variables and error messages."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from consumer.cli import _FLAGS, _envvar, _settings, main
from consumer.kafka_config import producer_config
from consumer.settings import WorkerSettings
from shared.settings import KafkaSettings


def test_help_documents_every_flag_with_its_environment_variable() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=200)

    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for flag, settings, field, _ in _FLAGS:
        assert flag in text
        assert f"env var: {_envvar(settings, field)}" in text
    for flag in ("--bootstrap-servers", "--group-id", "--topics-pattern", "--max-inflight", "--port"):
        assert flag in text
    assert "TRS_WORKER_INSTANCE_ID" in text
    assert "TRS_ENGINE_INSECURE" in text


def test_flags_and_environment_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRS_WORKER_GROUP_ID", "from-env")
    monkeypatch.setenv("TRS_KAFKA_SASL_PASSWORD", "s3cret")

    config = _settings({"max_inflight": "7", "bootstrap_servers": "k:9092", "topics": "a,b", "insecure": True})

    assert config.worker.max_inflight == 7
    assert config.worker.group_id == "from-env"
    assert config.worker.topics == ["a", "b"]
    assert config.kafka.bootstrap_servers == "k:9092"
    assert config.kafka.librdkafka_config()["sasl.password"] == "s3cret"
    assert config.engine.insecure is True


def test_a_bad_setting_is_a_usage_error_that_names_it() -> None:
    result = CliRunner().invoke(main, ["--max-inflight", "0"])

    assert result.exit_code == 2
    assert "invalid setting: max_inflight: Input should be greater than or equal to 1" in result.output


def test_a_bad_environment_variable_is_a_usage_error_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRS_WORKER_LOG_FORMAT", "xml")

    result = CliRunner().invoke(main, [])

    assert result.exit_code == 2
    assert "invalid setting: log_format: Input should be 'json' or 'text'" in result.output


def test_the_reply_producer_lingers_three_ms_by_default_and_as_told() -> None:
    default = producer_config(KafkaSettings(), WorkerSettings())
    chosen = producer_config(KafkaSettings(), _settings({"linger_ms": "1"}).worker)

    assert default["linger.ms"] == 3
    assert chosen["linger.ms"] == 1

"""How to reach Kafka, for the client and the worker alike, read from ``TRS_KAFKA_*`` environment variables.

Nothing is read at import time: each class reads the environment when it is instantiated.
Secrets are ``SecretStr``; they appear in no repr, log line or error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["KAFKA_MAX_MESSAGE_BYTES", "KafkaSettings"]

#: Kafka's default maximum message size; our result size limit keeps under it.
KAFKA_MAX_MESSAGE_BYTES = 1_000_000
#: librdkafka properties whose name holds one of these carry a secret (``sasl.password``,
#: ``ssl.keystore.password``, ``ssl.key.pem``, ``sasl.oauthbearer.client.secret`` ...).
_SECRET_PROPERTY_WORDS = ("password", "secret", "key.pem", "oauthbearer.config")
_MASKED = "**********"


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster. ``TRS_KAFKA_*``; security settings go to librdkafka."""

    # An error must not echo an input: it may be a password.
    model_config = SettingsConfigDict(env_prefix="TRS_KAFKA_", extra="ignore", hide_input_in_errors=True)

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("bootstrap_servers", "TRS_KAFKA_BOOTSTRAP_SERVERS", "TRS_KAFKA_BOOTSTRAP"),
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = "trs"
    #: Any other librdkafka property, e.g. ``{"socket.keepalive.enable": "true"}``; secret ones are masked in a repr.
    extra: dict[str, str] = Field(default_factory=dict)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name == "extra":
                value = {key: _MASKED if _is_secret_property(key) else item for key, item in value.items()}
            yield name, value

    def librdkafka_config(self) -> dict[str, Any]:
        """The common librdkafka properties, secrets revealed only here."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol.lower(),
            "client.id": self.client_id,
        }
        optional: dict[str, str | SecretStr | None] = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password,
        }
        for key, value in optional.items():
            if isinstance(value, SecretStr):
                config[key] = value.get_secret_value()
            elif value is not None:
                config[key] = value
        config.update(self.extra)
        return config


def _is_secret_property(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_PROPERTY_WORDS)

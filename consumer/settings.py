"""The worker's settings and its HTTP engine's, read from ``TRS_WORKER_*`` and ``TRS_ENGINE_*``.

Nothing is read at import time: each class reads the environment when it is instantiated.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.engine import DEFAULT_MAX_RESPONSE_BYTES
from shared.settings import KAFKA_MAX_MESSAGE_BYTES
from shared.wire import REQUEST_TOPIC_PATTERN

__all__ = ["EngineSettings", "WorkerSettings"]


def _comma_list(value: Any) -> Any:
    """``"a, b"`` from an environment variable becomes ``["a", "b"]``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class EngineSettings(BaseSettings):
    """Limits and TLS for the HTTP engine. ``TRS_ENGINE_*``."""

    model_config = SettingsConfigDict(env_prefix="TRS_ENGINE_", extra="ignore")

    transport: Literal["pyreqwest", "httpx"] = "pyreqwest"
    #: Bodies larger than this end ``response_too_large``; the default leaves room under 1 MB.
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=0, le=1 << 30)
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure: bool = False
    #: Hosts or CIDRs tasks may target; empty allows every target.
    allowed_targets: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("allowed_targets", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return _comma_list(value)


class WorkerSettings(BaseSettings):
    """The worker's own settings. ``TRS_WORKER_*``."""

    model_config = SettingsConfigDict(env_prefix="TRS_WORKER_", extra="ignore")

    group_id: str = Field(default="trs-workers", min_length=1)
    #: A regular expression over topic names; librdkafka treats it as one only with a leading ``^``.
    topics_pattern: str = REQUEST_TOPIC_PATTERN
    #: Explicit request topics; when set, they replace ``topics_pattern``.
    topics: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Static group membership (the pod name in Kubernetes): a restart within the session
    #: timeout keeps the member's partitions instead of rebalancing the group.
    instance_id: str | None = None
    max_inflight: int = Field(default=1000, ge=1, le=100_000)
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Seconds a SIGTERM leaves tasks in flight to finish before they are cut.
    grace_period: float = Field(default=25.0, ge=0)
    session_timeout_ms: int = Field(default=45_000, ge=1000)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    #: Most messages taken from the consumer in one call.
    consume_batch: int = Field(default=500, ge=1, le=100_000)
    #: How long a fetch may wait for data at the broker. Low, because a task waits for it.
    fetch_wait_max_ms: int = Field(default=10, ge=0, le=10_000)
    #: How long a result may wait to be sent with others. Each batch costs a wake-up of librdkafka's
    #: thread and a produce request, so a longer wait saves CPU on a busy worker and adds latency on a
    #: quiet one. Measured here (benchmarks/worker_throughput.py, remote_latency.py): 1 ms drained
    #: about 9,900 tasks/s with a one-task batch at 10.2 ms; 3 ms drained about 10,800 tasks/s with
    #: one-task batches still at 10.3-10.7 ms; 5 ms pushed one-task batches to about 15 ms under load.
    linger_ms: int = Field(default=3, ge=0, le=1000)
    #: How often the topic list is refreshed, so a new service's request topic is picked up.
    metadata_refresh_ms: int = Field(default=30_000, ge=1000)
    #: Seconds between commits of finished offsets.
    commit_interval: float = Field(default=0.5, gt=0, le=60)
    #: Largest result message; a bigger result is replaced by ``response_too_large``.
    max_message_bytes: int = Field(default=KAFKA_MAX_MESSAGE_BYTES, ge=10_000)
    #: Seconds the worker may take to become ready (broker, shared topics, group) before it exits
    #: non-zero. None, the default, waits as long as it takes: brokers and workers start in any order.
    startup_timeout: float | None = Field(default=None, gt=0)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("topics", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _poll_interval_covers_session(self) -> Self:
        # librdkafka refuses a consumer whose max.poll.interval.ms is below session.timeout.ms.
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError("max_poll_interval_ms must be at least session_timeout_ms")
        return self

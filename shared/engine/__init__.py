"""The HTTP execution engine: retries, backoff, deadlines, TLS, pools and limits.

Local mode and the worker both run tasks through ``Engine.run``, so a task behaves the same
in both modes.
"""

from shared.engine.allowlist import TargetAllowlist
from shared.engine.engine import DEFAULT_MAX_RESPONSE_BYTES, Engine, transport_factory
from shared.engine.transport import MockTransport, TlsConfig, Transport, TransportFactory

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "Engine",
    "MockTransport",
    "TargetAllowlist",
    "TlsConfig",
    "Transport",
    "TransportFactory",
    "transport_factory",
]

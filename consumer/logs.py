"""The worker's logs: JSON lines (or plain text), with credentials redacted.

A task's headers and URL may carry credentials for its target. Whatever reaches a log line, as a
header list, a dict, text or a traceback, passes through one filter that replaces the values of
``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie`` and API-key or token
headers, and the passwords of URLs, with ``[redacted]`` (see ``shared.redaction``).
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from shared.kafka_logging import LIBRDKAFKA_LOGGER
from shared.redaction import REDACTED, RedactingFilter, redact, redact_headers

__all__ = ["REDACTED", "RedactingFilter", "configure_logging", "redact", "redact_headers"]


def configure_logging(*, fmt: str = "json", level: str = "INFO") -> None:
    """Log to stderr as JSON lines (``fmt="json"``) or text, every record redacted."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp=True,
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # librdkafka's own lines arrive through the Kafka clients' logger, folded; below WARNING they are chatter.
    logging.getLogger(LIBRDKAFKA_LOGGER).setLevel(max(logging.getLevelName(level), logging.WARNING))

"""The worker's logs: JSON lines (or plain text), with credentials redacted.

A task's headers and URL may carry credentials for its target. Whatever reaches a log line, as a
header list, a dict, text or a traceback, passes through one filter that replaces the values of
``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie`` and API-key or token
headers, and the passwords of URLs, with ``[redacted]`` (see ``shared.redaction``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from shared.redaction import REDACTED, is_secret_header, redact, redact_headers

__all__ = ["REDACTED", "RedactingFilter", "configure_logging", "redact", "redact_headers"]

#: Formats the tracebacks the filter redacts before any handler formats the record.
_TRACEBACKS = logging.Formatter()


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret_header(k) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) == 2 and is_secret_header(value[0]):
            return (value[0], REDACTED)
        return [_redact_value(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts credentials in a record's message, arguments, extra fields, traceback and stack."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            # An exception's text can hold a URL or a header; formatters print exc_text when exc_info is gone.
            record.exc_text = redact(_TRACEBACKS.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(record.__dict__.items()):
            if name not in self._STANDARD:
                setattr(record, name, _redact_value(value))
        return True


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
    # librdkafka's own chatter arrives through the Kafka clients' logger at their level.
    logging.getLogger("confluent_kafka").setLevel(max(logging.getLevelName(level), logging.WARNING))

"""The worker's logs: JSON lines (or plain text), with credentials redacted.

A task's headers may carry credentials for its target. Whatever reaches a log line, as a header
list, a dict or text, passes through one filter that replaces the values of ``Authorization``,
``Proxy-Authorization``, ``Cookie``, ``Set-Cookie`` and API-key headers with ``[redacted]``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from shared.kafka_logging import LIBRDKAFKA_LOGGER

__all__ = ["REDACTED", "RedactingFilter", "configure_logging", "redact", "redact_headers"]

REDACTED = "[redacted]"
_SECRET_NAMES = r"(?:proxy-)?authorization|cookie|set-cookie|x-api-key|api-key|apikey|x-auth-token"
_SECRET_NAME_RE = re.compile(rf"^(?:{_SECRET_NAMES})$", re.IGNORECASE)
# "Authorization: Bearer abc", "('Cookie', 'a=1')", '"x-api-key": "k"': the name, a separator, the value.
_SECRET_IN_TEXT_RE = re.compile(
    rf"""(?P<name>["']?(?:{_SECRET_NAMES})["']?)(?P<sep>\s*[:=,]\s*)(?P<value>"[^"]*"|'[^']*'|[^\s,;)}}\]]+(?:\s+[^\s,;)}}\]'"]+)?)""",
    re.IGNORECASE,
)


def _is_secret(name: object) -> bool:
    return isinstance(name, str) and bool(_SECRET_NAME_RE.match(name))


def redact_headers(headers: Sequence[tuple[str, str]] | Mapping[str, str]) -> list[tuple[str, str]]:
    """``headers`` as a list of pairs with credential values replaced."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, REDACTED if _is_secret(name) else value) for name, value in pairs]


def redact(text: str) -> str:
    """``text`` with the values of credential headers replaced."""

    def replace(match: re.Match[str]) -> str:
        value = match.group("value")
        quote = value[0] if value[:1] in ("'", '"') else ""
        return f"{match.group('name')}{match.group('sep')}{quote}{REDACTED}{quote}"

    return _SECRET_IN_TEXT_RE.sub(replace, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if _is_secret(k) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) == 2 and _is_secret(value[0]):
            return (value[0], REDACTED)
        return [_redact_value(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts credentials in a record's message, arguments and extra fields."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
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
    # librdkafka's own lines arrive through the Kafka clients' logger, folded; below WARNING they are chatter.
    logging.getLogger(LIBRDKAFKA_LOGGER).setLevel(max(logging.getLevelName(level), logging.WARNING))

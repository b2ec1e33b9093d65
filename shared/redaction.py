"""Credentials out of what people read: the values of credential headers and the user info of URLs.

A task's headers and URL may carry credentials for its target. Log lines, reprs and error
messages pass what they show of a task through these functions first. A header is a credential
when its name holds one of the words in ``SECRET_HEADER_WORDS`` (``Authorization``, ``Cookie``,
``Set-Cookie``, ``X-API-Key``, ``X-Auth-Token`` ...); a URL's user info is its password, or the
whole of it when it is a bare token (``https://TOKEN@host/``).

``RedactingFilter`` applies the same to log records: the worker's log handler has it, and so do
the loggers of the HTTP libraries the engine drives, whatever handlers an application sets up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "REDACTED",
    "SECRET_HEADER_WORDS",
    "RedactingFilter",
    "is_secret_header",
    "redact",
    "redact_headers",
    "redact_url",
]

REDACTED = "[redacted]"
#: A header whose name contains one of these (case-insensitive) carries a credential.
SECRET_HEADER_WORDS = ("auth", "cookie", "token", "secret", "passw", "api-key", "api_key", "apikey", "session")

_WORDS = "|".join(re.escape(word) for word in SECRET_HEADER_WORDS)
# A name starts where a word starts and its runs are bounded, so a long word costs linear time.
_NAME = rf"(?<![\w-])[\w-]{{0,64}}(?:{_WORDS})[\w-]{{0,64}}"
# "Authorization: Bearer abc", "('Cookie', 'a=1')", '"x-api-key": "k"', "token=abc": the name, a
# separator, the value. A quoted value ends at its closing quote; a bare one runs to the end of
# the line or the next , ) } ] or quote, so "Cookie: a=1; b=2" loses both cookies.
_SECRET_IN_TEXT_RE = re.compile(
    rf"""(?P<name>["']?{_NAME}["']?)(?P<sep>\s*[:=,]\s*)"""
    r"""(?P<value>b?"(?:[^"\\]|\\.)*"|b?'(?:[^'\\]|\\.)*'|[^,)}\]'"\r\n]+)""",
    re.IGNORECASE,
)
# scheme://userinfo@ : the user info runs to the last @ before the path, query or fragment.
_URL_USERINFO_RE = re.compile(
    r"""(?P<scheme>\b[a-z][a-z0-9+.-]{0,30}://)(?P<userinfo>[^\s/?#'"<>]*)@""",
    re.IGNORECASE,
)


def is_secret_header(name: object) -> bool:
    """Whether a header called ``name`` carries a credential."""
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    return any(word in lowered for word in SECRET_HEADER_WORDS)


def redact_headers(headers: Sequence[tuple[str, str]] | Mapping[str, str]) -> list[tuple[str, str]]:
    """``headers`` as a list of pairs with credential values replaced."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, REDACTED if is_secret_header(name) else value) for name, value in pairs]


def _masked_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match.group("userinfo").partition(":")
    masked = f"{user}:{REDACTED}" if colon else REDACTED
    return f"{match.group('scheme')}{masked}@"


def redact_url(url: str) -> str:
    """``url`` with its password (or a bare user-info token) replaced; unchanged without user info."""
    return _URL_USERINFO_RE.sub(_masked_userinfo, url) if "@" in url else url


def _masked_value(match: re.Match[str]) -> str:
    value = match.group("value")
    prefix = "b" if value[:2] in ("b'", 'b"') else ""
    quote = value[len(prefix)] if value[len(prefix) : len(prefix) + 1] in ("'", '"') else ""
    return f"{match.group('name')}{match.group('sep')}{prefix}{quote}{REDACTED}{quote}"


def redact(text: str) -> str:
    """``text`` with the values of credential headers and the passwords of URLs replaced."""
    return _SECRET_IN_TEXT_RE.sub(_masked_value, redact_url(text))


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

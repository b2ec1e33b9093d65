"""Credentials out of what people read: the values of credential headers and the user info of URLs.

A task's headers and URL may carry credentials for its target. Log lines, reprs and error
messages pass what they show of a task through these functions first. A header is a credential
when its name holds one of the words in ``SECRET_HEADER_WORDS`` (``Authorization``, ``Cookie``,
``Set-Cookie``, ``X-API-Key``, ``X-Auth-Token`` ...); a URL's user info is its password, or the
whole of it when it is a bare token (``https://TOKEN@host/``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = ["REDACTED", "SECRET_HEADER_WORDS", "is_secret_header", "redact", "redact_headers", "redact_url"]

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

"""Keeping credentials out of files, logs and messages.

A server URL may carry credentials (``http://user:KEY@host/v1``) and a server's error body
may echo the key it was sent. Nothing the library stores or prints passes through
unredacted: URLs lose their userinfo, and every known secret is masked in free text.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "Redactor", "redact_url", "url_secrets"]

MASK = "***"


def redact_url(url: str) -> str:
    """``url`` without its userinfo (``http://u:p@h:1/v1`` -> ``http://***@h:1/v1``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{MASK}@{host}", parts.path, parts.query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The username and password written into ``url``, if any (to mask them elsewhere)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    return [s for s in (parts.username, parts.password) if s]


class Redactor:
    """Masks every known secret (keys, URL credentials) in text before it is stored or shown."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        # Longest first, so a key that contains another is masked whole; very short strings
        # (a one-letter user name) are left alone rather than masking every such letter.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, *secrets: str | None) -> None:
        self._secrets = sorted(set(self._secrets) | {s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

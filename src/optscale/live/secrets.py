"""Keeping credentials out of files, logs and messages.

A server URL may carry credentials (``http://user:KEY@host/v1``, or a key in its query
string) and a server's error body may echo the key it was sent. URLs are shown and stored
without their userinfo and query; free text that may echo a key (error messages) has every
known secret masked. Masking is for such values only: it is never run over a whole record,
where a short key (``test``) would also hit field names and unrelated values.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

__all__ = ["MASK", "Redactor", "redact_url", "url_secrets"]

MASK = "***"


def redact_url(url: str) -> str:
    """``url`` without its userinfo, query or fragment (``http://u:p@h:1/v1?k=x`` -> ``http://***@h:1/v1?***``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{MASK}@{host}" if "@" in parts.netloc else host
    return urlunsplit((parts.scheme, netloc, parts.path, MASK if parts.query else "", MASK if parts.fragment else ""))


def url_secrets(url: str) -> list[str]:
    """The credentials written into ``url`` (to mask them elsewhere).

    Its username and password, the ``Basic`` authorization httpx builds from them (which a
    server may echo), and the values of its query string.
    """
    try:
        parts = urlsplit(url)
        query = [value for _, value in parse_qsl(parts.query)]
    except ValueError:
        return []
    found = [s for s in (parts.username, parts.password) if s]
    found += [unquote(s) for s in found if unquote(s) != s]
    if parts.username is not None or parts.password is not None:
        userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        found.append(base64.b64encode(userinfo.encode()).decode("ascii"))
    return found + [v for v in query if v]


def _forms(secret: str) -> set[str]:
    """``secret`` as written and as an exception's repr may quote it (``b'Bearer sk-x\\n'``, ``'sk-\\xe9'``)."""
    return {secret, repr(secret)[1:-1], ascii(secret)[1:-1], repr(secret.encode())[2:-1]}


class Redactor:
    """Masks every known secret (keys, URL credentials) in free text, such as an error message.

    Each secret is also masked in its escaped forms, since an error may quote it as a repr.
    """

    def __init__(self, secrets: Iterable[str | None] = ()):
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        # Longest first, so a key that contains another is masked whole; very short strings
        # (a one-letter user name) are left alone rather than masking every such letter.
        found = {form for s in secrets if s and len(s) >= 4 for form in _forms(s)}
        self._secrets = sorted(set(self._secrets) | found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

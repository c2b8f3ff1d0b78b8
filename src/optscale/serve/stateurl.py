"""The URL of the state that replicas share (``--state``): checked when the settings are built, long before
a connection, and shown with its password masked."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import InputError

__all__ = ["SCHEMES", "check_state_url", "redact_state_url", "scrub"]

#: URL schemes of a Redis server redis-py connects to.
SCHEMES = ("redis", "rediss", "unix")


def _password(url: str) -> str | None:
    """The password in ``url``: in its user part, or its ``password`` query parameter (redis-py reads both)."""
    try:
        parts = urlsplit(url)
        return parts.password or dict(parse_qsl(parts.query)).get("password") or None
    except ValueError:
        return None


def redact_state_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for errors and logs); its user, host and database stay,
    unlike :func:`optscale.live.secrets.redact_url`, which drops a server URL's userinfo and query."""
    password = _password(url)
    if password is None:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def scrub(text: str, url: str) -> str:
    """``text`` (a client library's message) without the password of ``url``."""
    password = _password(url)
    return text.replace(password, "***") if password else text


def check_state_url(url: str, where: str = "--state") -> str:
    """``url`` if it is a Redis URL (redis://, rediss:// or unix://), else an :class:`InputError` at ``where``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError as exc:
        raise InputError(f"{redact_state_url(url)} is not a URL: {scrub(str(exc), url)}", where) from None
    if parts.scheme not in SCHEMES:
        raise InputError(f"{redact_state_url(url)}: a Redis URL starts with {', '.join(s + '://' for s in SCHEMES)} "
                         "(e.g. redis://127.0.0.1:6379/0)", where)
    if parts.scheme != "unix" and not parts.hostname:
        raise InputError(f"{redact_state_url(url)}: no host (e.g. redis://127.0.0.1:6379/0)", where)
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise InputError(f"{redact_state_url(url)}: the database is a number, /{db} is not", where)
    return url

"""Client keys: from a file (one per line) or an environment variable, compared in constant time.

The key a client sends (``Authorization: Bearer KEY``) only proves who may use the proxy: it
is never forwarded upstream (the upstream gets the server's own key) and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from ..errors import InputError
from ..io import numbered_lines
from ..live.types import clean_key
from .errors import ApiError
from .settings import CLIENT_KEYS_ENV

__all__ = ["ClientKeys", "load_client_keys"]


class ClientKeys:
    """The accepted keys, kept as SHA-256 digests; :meth:`check` compares with every one of them."""

    def __init__(self, keys: list[str]):
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def check(self, authorization: str | None) -> str | None:
        """The caller's identity (a digest prefix, for the idempotency store), or raise a 401.

        Every stored key is compared, so the time taken says nothing about which one nearly matched.
        """
        if not self._digests:
            return None
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "missing API key: send Authorization: Bearer KEY", None, "missing_api_key",
                           {"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(key.strip().encode()).digest()
        match = False
        for known in self._digests:
            match |= hmac.compare_digest(digest, known)
        if not match:
            raise ApiError(401, "invalid API key", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        return digest.hex()[:16]


def load_client_keys(path: str | None, env: Mapping[str, str]) -> ClientKeys:
    """Keys from ``path`` (one per line; blank lines and ``#`` comments skipped) and ``OPTSCALE_SERVE_API_KEYS``."""
    keys: list[str] = []
    if path:
        for lineno, line in numbered_lines(path):
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(_checked(line, f"{path}:{lineno}"))
        if not keys:
            raise InputError("the file holds no key (one per line)", path)
    keys += [_checked(k, CLIENT_KEYS_ENV) for k in env.get(CLIENT_KEYS_ENV, "").split(",") if k.strip()]
    return ClientKeys(keys)


def _checked(key: str, where: str) -> str:
    """A key stripped and checked as every key is (:func:`~optscale.live.types.clean_key`): one with a
    space or a control character could never arrive in a header, and its error must not show it."""
    try:
        return clean_key(key)
    except ValueError as exc:
        raise InputError(str(exc), where) from None

"""Library names -> command-line flags, in one table per command.

The library names every bad value by its own argument or setting (``n_max``,
``settings.alpha``, ``scorer.base_url``); each command wraps its body in
``with flags(NAMES):`` so its users read the flags they typed (``--n-max``,
``--set alpha``, ``--scorer-set base_url``) instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from ..errors import InputError

__all__ = ["flags"]


@contextlib.contextmanager
def flags(names: Mapping[str, str]) -> Iterator[None]:
    """Re-raise :class:`InputError` with its place translated by ``names`` (see :meth:`InputError.renamed`)."""
    try:
        yield
    except InputError as exc:
        raise exc.renamed(names) from None

"""Network failures of a request upstream, as the registry error the mirror answers with."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import aiohttp

from rayfly.proxy.oci import UpstreamError

NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


@contextlib.contextmanager
def upstream_failure(what: str) -> Iterator[None]:
    """Turn a network failure in the block (aiohttp's, a timeout, a socket's) into
    :class:`UpstreamError` ``"<what>: <the error's type>"`` (a 502). The error's text is left
    out: it may hold the upstream URL, and with it credentials."""
    try:
        yield
    except NETWORK_ERRORS as exc:
        raise UpstreamError(f"{what}: {type(exc).__name__}") from None

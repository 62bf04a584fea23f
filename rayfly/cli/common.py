"""What every ``rayfly`` command shares: exit codes, ``fail``, size and ``--insecure`` options,
connecting to a running cluster, the progress line."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, NoReturn

import click

from rayfly.cluster import connect_existing
from rayfly.config import parse_size
from rayfly.errors import RayflyError

EXIT_FAILED = 1
"""Some node failed (the command itself ran)."""
EXIT_BAD_INPUT = 2
"""Bad input, or nothing could be done: nothing was written anywhere."""

NODES_HELP = (
    "Which nodes (repeatable; several intersect): 'all', a count N, a share P% (rounded up), "
    "label:KEY=VALUE, resource:NAME, or comma-separated node ids (unique prefixes; "
    "id:PREFIX for one of 6 digits or fewer, which would read as a count)."
)

ANY_REGISTRY = "*"
"""What a bare ``--insecure`` (no NAME) stands for: the image's own registry."""

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "NODES_HELP",
    "Progress",
    "connect_existing",
    "echo_json",
    "fail",
    "insecure_option",
    "plain_http",
    "size_param",
]


def fail(exc: BaseException | str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``rayfly: error: ...`` and exit non-zero."""
    click.echo(f"rayfly: error: {exc}", err=True)
    sys.exit(code)


def echo_json(data: Any) -> None:
    """Print ``data`` as one indented JSON document."""
    click.echo(json.dumps(data, indent=2, default=str))


def size_param(_ctx: Any, _param: Any, value: str | None) -> int | None:
    """Click callback: a size such as ``16MiB`` in bytes (None stays None)."""
    try:
        return None if value is None else parse_size(value)
    except RayflyError as exc:
        raise click.BadParameter(str(exc)) from None


def insecure_option(bare: bool = False) -> Any:
    """``--insecure NAME`` (repeatable): allow plain http to registry NAME (an ``--upstream``
    name, or an image's registry host[:port]). With ``bare``, ``--insecure`` alone is accepted
    too and means the image's own registry."""
    extra: dict[str, Any] = {"is_flag": False, "flag_value": ANY_REGISTRY} if bare else {}
    return click.option(
        "--insecure",
        multiple=True,
        metavar="NAME",
        help="Allow plain http to registry NAME (repeatable)"
        + ("; alone: to the image's registry." if bare else "."),
        **extra,
    )


def plain_http(registry: str, insecure: tuple[str, ...]) -> bool:
    """True when ``--insecure`` allows plain http to ``registry``."""
    names = {n.lower() for n in insecure}
    return ANY_REGISTRY in names or registry.lower() in names


class Progress:
    """A one-line progress display on a terminal: bytes across nodes, nodes finished."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()

    def __call__(self, done: int, total: int, nodes_done: int, nodes: int) -> None:
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        rate = done / max(1e-6, time.monotonic() - self.t0) / 1e6
        self.stream.write(
            f"\r[{bar:<30}] {frac:6.1%} {done / 1e6:10.1f}/{total / 1e6:.1f} MB "
            f"{rate:8.1f} MB/s  nodes {nodes_done}/{nodes}"
        )
        self.stream.flush()

    def close(self) -> None:
        """End the progress line."""
        self.stream.write("\n")

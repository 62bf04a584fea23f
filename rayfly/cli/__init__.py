"""The ``rayfly`` command: one module per command (group), shared parts in :mod:`.common`.

``distribute``, ``demo`` (:mod:`.distribute`, :mod:`.demo`), ``status``, ``unpin``, ``cache``
(:mod:`.status`), ``mirror`` (:mod:`.mirror`). Run as ``rayfly`` or ``python -m rayfly.cli``.
"""

from __future__ import annotations

import click

from rayfly.cli import demo, distribute, mirror, status


@click.group()
@click.version_option(package_name="rayfly")
def main() -> None:
    """Peer-to-peer distribution of files, datasets and images across a Ray cluster."""


for _command in (
    distribute.distribute,
    demo.demo,
    mirror.mirror,
    status.status,
    status.unpin,
    status.cache,
):
    main.add_command(_command)

__all__ = ["main"]

"""``rayfly demo``: a local Ray of several nodes, a sample HTTP origin, one distribution."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from rayfly import api
from rayfly.cli.common import EXIT_FAILED, Progress, fail, size_param
from rayfly.errors import RayflyError
from rayfly.report import Report


@click.command()
@click.option("--local-nodes", default=4, show_default=True, type=click.IntRange(1, 16))
@click.option("--size", default="256MiB", show_default=True, callback=size_param)
@click.option(
    "--workdir",
    default=None,
    help="Where the sample origin and copies go (default: a temporary directory).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def demo(local_nodes: int, size: int, workdir: str | None, as_json: bool) -> None:
    """Start a local Ray of several nodes and a sample HTTP origin, and distribute a file."""
    from rayfly.demo_origin import OriginServer, make_file

    root = Path(workdir or tempfile.mkdtemp(prefix="rayfly-demo-"))
    make_file(root / "origin" / "sample.bin", size)
    origin = OriginServer(root / "origin").start()
    try:
        progress = None if as_json else Progress()
        report = api.distribute(
            origin.url + "sample.bin",
            str(root / "nodes/{node_id}/sample.bin"),
            local_nodes=local_nodes,
            progress=progress,
        )
        if progress:
            progress.close()
    except RayflyError as exc:
        fail(exc)
    finally:
        origin.stop()
    _print(report, origin.bytes_served, size, root, as_json)
    sys.exit(0 if report.ok else EXIT_FAILED)


def _print(report: Report, served: int, size: int, root: Path, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps({**report.to_dict(files=False), "origin_server_bytes": served}, indent=2)
        )
        return
    click.echo(str(report))
    click.echo(
        f"origin HTTP server sent {served} bytes for a {size}-byte file "
        f"({served / size:.2f}x); copies under {root / 'nodes'}"
    )

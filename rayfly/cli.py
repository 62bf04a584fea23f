"""The ``rayfly`` command."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import click

from rayfly import api, cli_status
from rayfly.config import parse_size
from rayfly.errors import RayflyError
from rayfly.source import parse_storage_options

EXIT_FAILED_NODES = 1
EXIT_BAD_INPUT = 2
NODES_HELP = (
    "Which nodes (repeatable; several intersect): 'all', a count N, a share P% (rounded up), "
    "label:KEY=VALUE, resource:NAME, or comma-separated node ids (unique prefixes)."
)


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


def _size(_ctx: Any, _param: Any, value: str | None) -> int | None:
    try:
        return None if value is None else parse_size(value)
    except RayflyError as exc:
        raise click.BadParameter(str(exc)) from None


@contextlib.contextmanager
def json_stdout() -> Iterator[TextIO]:
    """For ``--json``: stdout carries exactly one document. For the rest of the process, file
    descriptor 1 (and so ``print``, Ray's driver logs, any child process) goes to stderr; the
    stream yielded writes to the original stdout. (A ``sys.stdout`` that is not file descriptor 1,
    as in click's test runner, is used as it is.)"""
    try:
        real = sys.stdout.fileno() == 1
    except (OSError, ValueError):
        real = False
    if not real:
        yield sys.stdout
        return
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        yield out
    finally:
        out.close()


def _fail(exc: BaseException) -> None:
    click.echo(f"rayfly: error: {exc}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group()
@click.version_option(package_name="rayfly")
def main() -> None:
    """Peer-to-peer distribution of files, datasets and images across a Ray cluster."""


@main.command()
@click.argument("source", required=False)
@click.option(
    "--dest",
    default=None,
    help="Destination path on every node; may contain {node_id}, {node_ip}, {hostname}.",
)
@click.option(
    "--image",
    default=None,
    metavar="REF",
    help="Preheat: put this image's config and layers into every chosen node's cache "
    "(instead of SOURCE --dest).",
)
@click.option(
    "--platform", default=None, help="With --image: os/arch[/variant] of an index, or 'all'."
)
@click.option("--insecure", is_flag=True, help="With --image: plain http to the registry.")
@click.option(
    "--address",
    default=None,
    help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray).",
)
@click.option(
    "--local-nodes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Simulated nodes of the embedded local Ray.",
)
@click.option(
    "--nodes",
    multiple=True,
    default=["all"],
    show_default=True,
    help=NODES_HELP,
)
@click.option("--exclude-head", is_flag=True, help="Leave the head node out.")
@click.option(
    "--piece-size",
    default=None,
    callback=_size,
    help="Piece size, e.g. 16MiB (default: length/500 rounded up to a power of two, 4..64 MiB).",
)
@click.option(
    "--concurrency",
    default=None,
    type=click.IntRange(1, 256),
    help="Pieces in flight per node (default 8).",
)
@click.option(
    "--source-node",
    default=None,
    metavar="NODE",
    help="The node a local SOURCE path is on (default: this process's node): a node id "
    "prefix, IP or hostname; 'any' when every node sees the same file (NFS, Lustre).",
)
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Of a prefix, take only files whose path relative to it matches (repeatable), "
    "e.g. '*.safetensors'.",
)
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out matching files.")
@click.option(
    "--max-files",
    default=None,
    type=int,
    help="Refuse a prefix holding more files than this (after --include/--exclude).",
)
@click.option(
    "--limit-rate",
    default=None,
    metavar="RATE",
    help="Per-node download rate for this distribution, e.g. 100MiB (per second); a node's "
    "RAYFLY_DOWNLOAD_RATE applies too, the lower wins.",
)
@click.option("--sha256", default=None, help="Expected sha256 of the file; a mismatch fails.")
@click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="fsspec storage option, repeatable (e.g. endpoint_url=http://127.0.0.1:9000).",
)
@click.option("--tag", default="", help="Makes a distinct task of the same URL (like dfget).")
@click.option("--timeout", default=None, type=float, help="Give up on nodes after this many s.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report.")
@click.option(
    "--pin", is_flag=True, help="Also give it to nodes that join later (until `rayfly unpin`)."
)
@click.option(
    "--submit",
    "as_job",
    is_flag=True,
    help="Run as a Ray job through the dashboard at --address (http://HEAD:8265); follow logs.",
)
@click.option("--working-dir", default=None, help="With --submit: ship this directory.")
@click.option("--runtime-env", default=None, help="With --submit: a runtime_env YAML/JSON file.")
def distribute(
    source: str | None,
    dest: str | None,
    image: str | None,
    platform: str | None,
    insecure: bool,
    address: str | None,
    local_nodes: int,
    nodes: tuple[str, ...],
    exclude_head: bool,
    piece_size: int | None,
    concurrency: int | None,
    source_node: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    max_files: int | None,
    limit_rate: str | None,
    sha256: str | None,
    storage_options: tuple[str, ...],
    tag: str,
    timeout: float | None,
    as_json: bool,
    pin: bool,
    as_job: bool,
    working_dir: str | None,
    runtime_env: str | None,
) -> None:
    """Fetch SOURCE (a file, directory or object-store prefix) once and put it on every node.

    With --image REF instead, preheat a container image into every node's cache.
    """
    params = click.get_current_context().params
    if image and (source or dest):
        _fail(click.UsageError("give either SOURCE --dest or --image, not both"))
    if not image and not (source and dest):
        _fail(click.UsageError("give SOURCE and --dest (or --image REF to preheat an image)"))
    if as_job:
        cli_status.submit_distribution(params)
    with json_stdout() if as_json else contextlib.nullcontext(sys.stdout) as out:
        _distribute(params, out)


def _distribute(params: dict[str, Any], out: TextIO) -> None:
    """Run ``rayfly distribute`` (not as a job); print the report on ``out`` and exit."""
    image, as_json = params["image"], params["as_json"]
    progress = Progress() if not as_json and sys.stderr.isatty() else None
    try:
        cli_status.check_pin(params)
        options = parse_storage_options(params["storage_options"])
        report = (
            _preheat(params)
            if image
            else api.distribute(
                params["source"],
                params["dest"],
                nodes=list(params["nodes"]),
                exclude_head=params["exclude_head"],
                piece_size=params["piece_size"],
                concurrency=params["concurrency"],
                limit_rate=params["limit_rate"],
                sha256=params["sha256"],
                storage_options=options,
                tag=params["tag"],
                address=params["address"],
                local_nodes=params["local_nodes"],
                progress=progress,
                timeout=params["timeout"],
                source_node=params["source_node"],
                include=params["include"],
                exclude=params["exclude"],
                max_files=params["max_files"],
            )
        )
    except RayflyError as exc:
        _fail(exc)
        return
    finally:
        if progress is not None:
            progress.close()
    click.echo(report.to_json() if as_json else str(report), file=out)
    out.flush()
    for warning in report.warnings:
        click.echo(f"rayfly: warning: {warning}", err=True)
    if params["pin"]:
        try:
            cli_status.pin_distribution(params, [n.node_id for n in report.nodes if n.ok])
        except RayflyError as exc:
            _fail(exc)
    sys.exit(0 if report.ok else EXIT_FAILED_NODES)


def _preheat(params: dict[str, Any]) -> Any:
    from rayfly.proxy.preheat import preheat

    return preheat(
        params["image"],
        platform=params["platform"],
        nodes=list(params["nodes"]),
        exclude_head=params["exclude_head"],
        insecure=params["insecure"],
        address=params["address"],
        timeout=params["timeout"],
    )


@main.command()
@click.option("--local-nodes", default=4, show_default=True, type=click.IntRange(1, 16))
@click.option("--size", default="256MiB", show_default=True, callback=_size)
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
        _fail(exc)
        return
    finally:
        origin.stop()
    if as_json:
        click.echo(
            json.dumps(
                {**report.to_dict(files=False), "origin_server_bytes": origin.bytes_served},
                indent=2,
            )
        )
    else:
        click.echo(str(report))
        click.echo(
            f"origin HTTP server sent {origin.bytes_served} bytes for a {size}-byte file "
            f"({origin.bytes_served / size:.2f}x); copies under {root / 'nodes'}"
        )
    sys.exit(0 if report.ok else EXIT_FAILED_NODES)


from rayfly.proxy.cli import mirror  # noqa: E402  (the `rayfly mirror` group)

main.add_command(mirror)
for _command in cli_status.COMMANDS:  # `rayfly status`, `rayfly cache`, `rayfly unpin`
    main.add_command(_command)

if __name__ == "__main__":
    main()

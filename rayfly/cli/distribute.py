"""``rayfly distribute``: check the arguments, run (here, or as a Ray job with ``--submit``),
print the report; ``--pin`` records the distribution for nodes that join later."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click

from rayfly import api
from rayfly.cli.common import (
    EXIT_FAILED,
    NODES_HELP,
    Progress,
    fail,
    insecure_option,
    plain_http,
    size_param,
)
from rayfly.errors import InvalidInput, JobFailed, RayflyError
from rayfly.filters import FileFilter
from rayfly.plot import check_timeline_path
from rayfly.report import Report
from rayfly.source import parse_storage_options


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


@click.command()
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
@insecure_option(bare=True)
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
    callback=size_param,
    help="Piece size, e.g. 16MiB (default: length/64 rounded up to a power of two, 4..16 MiB, "
    "smaller on slow links: what moves between peers in about 2 s, at least 4 MiB, or 1-2 MiB "
    "where 4 MiB would take over 4 s; the last 2 pieces' worth cut in halves). A size "
    "given here is every piece's.",
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
    "--timeline",
    "timeline_path",
    default=None,
    metavar="FILE",
    help="Also write every piece each node fetched (when it landed, its size, the parent node "
    "or the origin it came from, its seconds) to FILE: *.csv or *.parquet.",
)
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
    insecure: tuple[str, ...],
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
    timeline_path: str | None,
    pin: bool,
    as_job: bool,
    working_dir: str | None,
    runtime_env: str | None,
) -> None:
    """Fetch SOURCE (a file, directory or object-store prefix) once and put it on every node.

    With --image REF instead, preheat a container image into every node's cache.
    """
    params = click.get_current_context().params
    _check(params)
    if as_job:
        submit_distribution(params)
    with json_stdout() if as_json else contextlib.nullcontext(sys.stdout) as out:
        _distribute(params, out)


def _check(params: dict[str, Any]) -> None:
    """Refuse bad arguments before anything runs (exit 2)."""
    image, source, dest = params["image"], params["source"], params["dest"]
    if image and (source or dest):
        fail(click.UsageError("give either SOURCE --dest or --image, not both"))
    if not image and not (source and dest):
        fail(click.UsageError("give SOURCE and --dest (or --image REF to preheat an image)"))
    if params["timeline_path"]:
        if params["as_job"]:
            fail(
                click.UsageError(
                    "--timeline writes a file where the distribution runs; with --submit that is "
                    "the job's driver on the cluster: run without --submit to get the file, or "
                    "use --json (each node's pieces per parent are under 'parents')"
                )
            )
        try:
            check_timeline_path(params["timeline_path"])
        except RayflyError as exc:
            fail(click.UsageError(str(exc)))


def _distribute(params: dict[str, Any], out: TextIO) -> NoReturn:
    """Run ``rayfly distribute`` (not as a job); print the report on ``out`` and exit."""
    progress = Progress() if not params["as_json"] and sys.stderr.isatty() else None
    try:
        check_pin(params)
        report = _preheat(params) if params["image"] else _run(params, progress)
    except RayflyError as exc:
        fail(exc)
    finally:
        if progress is not None:
            progress.close()
    _print(report, params["as_json"], out)
    if params["timeline_path"]:
        try:
            report.write_timeline(params["timeline_path"])
        except (OSError, RayflyError) as exc:
            fail(f"could not write the timeline to {params['timeline_path']!r}: {exc}", EXIT_FAILED)
    if params["pin"]:
        try:
            pin_distribution(params, [n.node_id for n in report.nodes if n.ok])
        except RayflyError as exc:
            fail(exc)
    sys.exit(0 if report.ok else EXIT_FAILED)


def _run(params: dict[str, Any], progress: Progress | None) -> Report:
    """The distribution ``params`` ask for, on this process's cluster."""
    return api.distribute(
        params["source"],
        params["dest"],
        storage_options=parse_storage_options(params["storage_options"]),
        address=params["address"],
        local_nodes=params["local_nodes"],
        progress=progress,
        **_shared_options(params),
    )


_SHARED = (
    "exclude_head", "piece_size", "concurrency", "limit_rate", "sha256", "tag", "timeout",
    "source_node", "include", "exclude", "max_files",
)  # fmt: skip


def _shared_options(params: dict[str, Any]) -> dict[str, Any]:
    """The options a distribution takes alike here and as a submitted job's arguments."""
    return {"nodes": list(params["nodes"]), **{k: params[k] for k in _SHARED}}


def _print(report: Report, as_json: bool, out: TextIO) -> None:
    """The report on ``out`` (one JSON document with ``--json``), warnings on stderr."""
    click.echo(report.to_json() if as_json else str(report), file=out)
    out.flush()
    for warning in report.warnings:
        click.echo(f"rayfly: warning: {warning}", err=True)


def _preheat(params: dict[str, Any]) -> Report:
    from rayfly.proxy.oci import parse_image_ref
    from rayfly.proxy.preheat import preheat

    registry = parse_image_ref(params["image"]).registry
    return preheat(
        params["image"],
        platform=params["platform"],
        nodes=list(params["nodes"]),
        exclude_head=params["exclude_head"],
        insecure=plain_http(registry, params["insecure"]),
        address=params["address"],
        timeout=params["timeout"],
    )


def load_runtime_env(path: str | None) -> dict[str, Any]:
    """A runtime_env from a YAML or JSON file (``{}`` without one)."""
    if not path:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidInput(f"--runtime-env {path}: cannot read it ({exc.strerror})") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"--runtime-env {path}: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"--runtime-env {path}: must hold a mapping (runtime_env fields)")
    return data


def submit_distribution(params: dict[str, Any]) -> NoReturn:
    """Run ``rayfly distribute`` with ``params`` as a Ray job; exit with the job's outcome."""
    from rayfly import submit

    try:
        args = submit.distribute_args(
            params["source"],
            params["dest"],
            storage_options=params["storage_options"],
            pin=params["pin"],
            as_json=params["as_json"],
            **_shared_options(params),
        )
        submit.submit(
            args,
            params["address"] or os.environ.get("RAY_API_SERVER_ADDRESS"),
            working_dir=params["working_dir"],
            runtime_env=load_runtime_env(params["runtime_env"]),
        )
    except JobFailed as exc:
        fail(exc, EXIT_FAILED)
    except RayflyError as exc:
        fail(exc)
    sys.exit(0)


def check_pin(params: dict[str, Any]) -> None:
    """Refuse ``--pin`` where it cannot work (before any transfer starts)."""
    if not params["pin"]:
        return
    if list(params["nodes"]) != ["all"] or params["exclude_head"]:
        raise InvalidInput("--pin keeps content on every node, joining ones too: drop --nodes")
    if not (params["address"] or os.environ.get("RAY_ADDRESS")):
        raise InvalidInput(
            "--pin needs a running cluster (--address or RAY_ADDRESS): an embedded local Ray "
            "ends with this command"
        )


def pin_distribution(params: dict[str, Any], nodes_done: list[str]) -> dict[str, Any]:
    """Record the pin after a distribution; print its id."""
    from rayfly import pin
    from rayfly.source import parse_storage_options

    row = pin.pin(
        params["source"],
        params["dest"],
        nodes_done,
        storage_options=parse_storage_options(params["storage_options"]),
        tag=params["tag"],
        sha256=params["sha256"],
        piece_size=params["piece_size"],
        concurrency=params["concurrency"],
        source_node=params["source_node"],
        files_filter=FileFilter(params["include"], params["exclude"], params["max_files"]),
    )
    click.echo(f"rayfly: pinned as {row['pin_id']} (rayfly unpin {row['pin_id']})", err=True)
    return row

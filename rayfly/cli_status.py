"""``rayfly status``, ``rayfly cache ls|rm|gc``, ``rayfly unpin``, and the ``--submit`` / ``--pin``
halves of ``rayfly distribute``. Registered on the ``rayfly`` group by ``rayfly/cli.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from rayfly.config import parse_size
from rayfly.errors import InvalidInput, JobFailed, RayflyError
from rayfly.filters import FileFilter

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

_address = click.option(
    "--address",
    default=None,
    help="Ray cluster address (default: RAY_ADDRESS, else the local cluster 'auto' finds).",
)
_node = click.option(
    "--node",
    "nodes",
    default=None,
    help="Only these nodes: comma-separated node ids (unique prefixes); default all.",
)


def fail(exc: BaseException, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``rayfly: error: ...`` and exit non-zero."""
    click.echo(f"rayfly: error: {exc}", err=True)
    sys.exit(code)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# --- distribute --submit / --pin ----------------------------------------------------------------
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
            nodes=list(params["nodes"]),
            exclude_head=params["exclude_head"],
            piece_size=params["piece_size"],
            concurrency=params["concurrency"],
            limit_rate=params["limit_rate"],
            sha256=params["sha256"],
            storage_options=params["storage_options"],
            tag=params["tag"],
            timeout=params["timeout"],
            source_node=params["source_node"],
            include=params["include"],
            exclude=params["exclude"],
            max_files=params["max_files"],
            pin=params["pin"],
            as_json=params["as_json"],
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


# --- status -------------------------------------------------------------------------------------
@click.command()
@_address
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(address: str | None, as_json: bool) -> None:
    """Tasks, peers (cache, transfers), mirrors and pins of the running cluster."""
    from rayfly.status import cluster_status, format_status

    try:
        data = cluster_status(address)
    except RayflyError as exc:
        fail(exc)
    if as_json:
        _echo_json(data)
    else:
        click.echo(format_status(data))


@click.command()
@click.argument("key")
@_address
def unpin(key: str, address: str | None) -> None:
    """Stop keeping a pinned distribution on joining nodes (KEY: pin id, task id or source)."""
    from rayfly import pin
    from rayfly.status import connect_existing

    try:
        connect_existing(address)
        removed = pin.unpin(key)
    except RayflyError as exc:
        fail(exc)
    click.echo("unpinned " + ", ".join(removed))


# --- cache --------------------------------------------------------------------------------------
@click.group()
def cache() -> None:
    """The per-node piece stores: list, remove, garbage-collect."""


@cache.command("ls")
@_address
@_node
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cache_ls(address: str | None, nodes: str | None, as_json: bool) -> None:
    """List cached tasks on each node: node id, cache id (the store's, kept across restarts),
    task id, length, state, source."""
    from rayfly import status as st

    try:
        st.connect_existing(address)
        rows = st.cache_ls(nodes)
    except RayflyError as exc:
        fail(exc)
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        if "task_id" not in r:
            click.echo(f"{r['node_id'][:12]}  unreachable: {r.get('error')}")
            continue
        state = "complete" if r["complete"] else "partial"
        click.echo(
            f"{r['node_id'][:12]}  {r.get('cache_id', '?')[:12]}  {r['task_id']}  "
            f"{r['length']:>12}  {state:<8}  {r['source']}"
        )


@cache.command("rm")
@click.argument("task_id")
@_address
@_node
def cache_rm(task_id: str, address: str | None, nodes: str | None) -> None:
    """Remove TASK_ID from the nodes' caches (a destination already written stays)."""
    from rayfly import status as st

    try:
        st.connect_existing(address)
        removed = st.cache_rm(task_id, nodes)
    except RayflyError as exc:
        fail(exc)
    click.echo(f"removed from {len(removed)} node(s): " + ", ".join(n[:12] for n in removed))


def _keep(_ctx: Any, _param: Any, value: str | None) -> int | None:
    try:
        return None if value is None else parse_size(value)
    except RayflyError as exc:
        raise click.BadParameter(str(exc)) from None


@cache.command("gc")
@_address
@_node
@click.option(
    "--keep",
    default=None,
    callback=_keep,
    help="Also evict least-recently-used tasks until at most this much is used, e.g. 10GiB.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be evicted and why; evict nothing.")
def cache_gc(address: str | None, nodes: str | None, keep: int | None, dry_run: bool) -> None:
    """Evict what each node's cache policy says must go (TTL, quota, disk watermarks)."""
    from rayfly import status as st

    try:
        st.connect_existing(address)
        plans = st.cache_gc(keep, nodes, dry_run)
    except RayflyError as exc:
        fail(exc)
    verb = "would evict" if dry_run else "evicted"
    for node_id, plan in plans.items():
        evictions = plan["evictions"]
        freed = sum(e["frees"] for e in evictions)
        click.echo(f"{node_id[:12]}  {verb} {len(evictions)} task(s), {freed} bytes of disk")
        for e in evictions:
            click.echo(f"  {e['task_id']}  {e['reason']}  frees {e['frees']} bytes")
        if plan.get("note"):
            click.echo(f"  note: {plan['note']}")


COMMANDS = (status, unpin, cache)

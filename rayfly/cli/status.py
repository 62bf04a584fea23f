"""``rayfly status``, ``rayfly cache ls|rm|gc``, ``rayfly unpin``: a running cluster's state."""

from __future__ import annotations

import click

from rayfly.cli.common import connect_existing, echo_json, fail, size_param
from rayfly.errors import RayflyError

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
        echo_json(data)
    else:
        click.echo(format_status(data))


@click.command()
@click.argument("key")
@_address
def unpin(key: str, address: str | None) -> None:
    """Stop keeping a pinned distribution on joining nodes (KEY: pin id, task id or source)."""
    from rayfly import pin

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
        connect_existing(address)
        rows = st.cache_ls(nodes)
    except RayflyError as exc:
        fail(exc)
    if as_json:
        echo_json(rows)
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
        connect_existing(address)
        removed = st.cache_rm(task_id, nodes)
    except RayflyError as exc:
        fail(exc)
    click.echo(f"removed from {len(removed)} node(s): " + ", ".join(n[:12] for n in removed))


@cache.command("gc")
@_address
@_node
@click.option(
    "--keep",
    default=None,
    callback=size_param,
    help="Also evict least-recently-used tasks until at most this much is used, e.g. 10GiB.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be evicted and why; evict nothing.")
def cache_gc(address: str | None, nodes: str | None, keep: int | None, dry_run: bool) -> None:
    """Evict what each node's cache policy says must go (TTL, quota, disk watermarks)."""
    from rayfly import status as st

    try:
        connect_existing(address)
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

"""``rayfly mirror``: start, stop and inspect the node-local registry mirrors; configure runtimes.

``start``/``stop``/``status``/``preheat`` talk to a running Ray cluster (``--address``, else
``RAY_ADDRESS``, else ``auto``): the mirrors are detached actors that outlive the command.
``config`` only writes or prints files on the machine it runs on.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rayfly.cli.common import (
    EXIT_FAILED,
    NODES_HELP,
    connect_existing,
    fail,
    insecure_option,
    plain_http,
)
from rayfly.errors import InvalidInput, RayflyError
from rayfly.proxy import runtimes
from rayfly.proxy.containerd_config import (
    DEFAULT_CONFIG_TOML,
    installed_containerd_major,
    with_config_path,
)
from rayfly.proxy.oci import DOCKER_HUB, parse_image_ref
from rayfly.proxy.server import MirrorSettings
from rayfly.proxy.upstream import Upstream, default_upstreams, parse_upstream


def build_settings(
    upstreams: tuple[str, ...],
    default_upstream: str | None,
    insecure: tuple[str, ...],
    tag_ttl: float = 5.0,
    verify_access: bool = False,
) -> MirrorSettings:
    """Mirror settings from the command line: ``NAME=URL`` upstreams, Docker Hub included."""
    plain = {name.lower() for name in insecure}
    ups: dict[str, Upstream] = default_upstreams()
    for text in upstreams:
        name = text.partition("=")[0].strip().lower()
        up = parse_upstream(text, insecure=name in plain)
        ups[up.name] = up
    default = (default_upstream or DOCKER_HUB).lower()
    if default not in ups:
        raise InvalidInput(f"--default-upstream {default!r} is not an upstream: add --upstream")
    return MirrorSettings(ups, default, tag_ttl, verify_access=verify_access)


@click.group()
def mirror() -> None:
    """Node-local pull-through OCI registry mirrors (containerd, CRI-O, podman, Docker)."""


@mirror.command()
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="NAME=URL",
    help="An upstream registry, repeatable (docker.io is Docker Hub by default).",
)
@click.option(
    "--default-upstream",
    default=None,
    metavar="NAME",
    help="Upstream for requests without ?ns= (default docker.io).",
)
@insecure_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=65001,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (0 picks a free one per node).",
)
@click.option("--tag-ttl", default=5.0, show_default=True, help="Seconds a tag stays resolved.")
@click.option(
    "--verify-access",
    is_flag=True,
    help="HEAD upstream with the client's credentials before serving cached content.",
)
@click.option("--docker-config", default=None, help="A Docker config.json with credentials.")
@click.option("--nodes", multiple=True, default=["all"], show_default=True, help=NODES_HELP)
@click.option("--exclude-head", is_flag=True, help="Leave the head node out.")
@click.option("--address", default=None, help="Ray address (default RAY_ADDRESS, else auto).")
@click.option("--json", "as_json", is_flag=True)
def start(
    upstreams: tuple[str, ...],
    default_upstream: str | None,
    insecure: tuple[str, ...],
    host: str,
    port: int,
    tag_ttl: float,
    verify_access: bool,
    docker_config: str | None,
    nodes: tuple[str, ...],
    exclude_head: bool,
    address: str | None,
    as_json: bool,
) -> None:
    """Start a mirror on every chosen node, and keep one there, on nodes that join later too,
    until `rayfly mirror stop` (running it again replaces the settings)."""
    import ray

    from rayfly.proxy.keeper import MirrorSpec, keep_mirrors

    try:
        settings = build_settings(upstreams, default_upstream, insecure, tag_ttl, verify_access)
        connect_existing(address)
        here = ray.get_runtime_context().get_node_id()
        spec = MirrorSpec(settings, host, port, docker_config, list(nodes), exclude_head, here)
        endpoints = keep_mirrors(spec)
    except RayflyError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(endpoints, indent=2))
    for e in endpoints:
        if not e.get("url"):
            click.echo(f"rayfly: mirror on {e['node_id'][:12]}: {e['keeper_error']}", err=True)
        elif not as_json:
            click.echo(f"{e['node_id'][:12]}  {e['node_ip']:<15}  {e['url']}")
    sys.exit(0 if all(e.get("url") for e in endpoints) else EXIT_FAILED)


@mirror.command()
@click.option("--address", default=None, help="Ray address (default RAY_ADDRESS, else auto).")
def stop(address: str | None) -> None:
    """Stop every node's mirror (and stop keeping mirrors on joining nodes)."""
    from rayfly.proxy.actor import stop_mirrors

    try:
        connect_existing(address)
        count = stop_mirrors()
    except RayflyError as exc:
        fail(exc)
    click.echo(f"stopped {count} mirror(s)")


@mirror.command()
@click.option("--address", default=None, help="Ray address (default RAY_ADDRESS, else auto).")
@click.option("--json", "as_json", is_flag=True)
def status(address: str | None, as_json: bool) -> None:
    """Each node's endpoint, health, requests served, bytes from upstream and from peers."""
    from rayfly.proxy.actor import mirror_status

    try:
        connect_existing(address)
        rows = mirror_status()
    except RayflyError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no mirror is running")
    for r in rows:
        click.echo(_status_line(r))
    sys.exit(0 if rows and all(r.get("healthy") for r in rows) else EXIT_FAILED)


def _status_line(r: dict[str, Any]) -> str:
    if not r.get("healthy"):
        last = r.get("last_answer")
        seen = f"last answered {time.time() - last:.0f}s ago" if last else "never answered"
        return f"{r['node_id'][:12]}  UNHEALTHY  {r.get('error', '')}  ({seen})"
    return (
        f"{r['node_id'][:12]}  {r['url']:<24}  requests {r.get('requests', 0):>6}  "
        f"served {r.get('bytes_served', 0) / 1e6:9.1f} MB  "
        f"upstream {r.get('bytes_from_upstream', 0) / 1e6:9.1f} MB  "
        f"peers {r.get('bytes_from_peers', 0) / 1e6:9.1f} MB"
        + _passed_note(r.get("blobs_passed_through", 0))
    )


def _passed_note(n: int) -> str:
    """Blobs this node's mirror could not keep (no room in its cache, say) and passed through,
    from the nodes that hold them or the upstream."""
    return f"  passed through {n} blob(s): the node's cache could not keep them" if n else ""


@mirror.command()
@click.argument("image")
@click.option("--platform", default="all", show_default=True, help="os/arch[/variant], or all.")
@click.option("--nodes", multiple=True, default=["all"], show_default=True, help=NODES_HELP)
@click.option("--exclude-head", is_flag=True, help="Leave the head node out.")
@click.option("--upstream", "upstreams", multiple=True, metavar="NAME=URL")
@insecure_option(bare=True)
@click.option("--docker-config", default=None, help="A Docker config.json with credentials.")
@click.option("--address", default=None, help="Ray address (default RAY_ADDRESS, else auto).")
@click.option("--timeout", default=None, type=float)
@click.option("--json", "as_json", is_flag=True)
def preheat(
    image: str,
    platform: str,
    nodes: tuple[str, ...],
    exclude_head: bool,
    upstreams: tuple[str, ...],
    insecure: tuple[str, ...],
    docker_config: str | None,
    address: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Put IMAGE's config and layers into every chosen node's cache (as distribute --image)."""
    from rayfly.proxy.preheat import preheat as run_preheat

    try:
        settings = build_settings(upstreams, None, insecure)
        connect_existing(address)
        report = run_preheat(
            image,
            platform=platform,
            nodes=list(nodes),
            exclude_head=exclude_head,
            upstreams=settings.upstreams,
            insecure=plain_http(parse_image_ref(image).registry, insecure),
            docker_config=docker_config,
            timeout=timeout,
        )
    except RayflyError as exc:
        fail(exc)
    click.echo(report.to_json() if as_json else str(report))
    sys.exit(0 if report.ok else EXIT_FAILED)


@mirror.group()
def config() -> None:
    """Point a container runtime on this machine at its node's mirror."""


@config.command()
@click.option("--registry", required=True, help="Registry whose pulls go through the mirror.")
@click.option("--hosts-dir", default=runtimes.DEFAULT_HOSTS_DIR, show_default=True)
@click.option("--mirror", "mirror_url", default=runtimes.DEFAULT_MIRROR, show_default=True)
@click.option("--server", default=None, help="Fallback upstream (default https://REGISTRY).")
@click.option(
    "--no-fallback",
    is_flag=True,
    help="Pull through the mirror only, never from the registry directly (pushes to it fail).",
)
@click.option(
    "--config-toml",
    default=None,
    metavar="FILE",
    help="containerd's config.toml to point at HOSTS_DIR (config_path). Default: "
    f"{DEFAULT_CONFIG_TOML} when HOSTS_DIR is the default, else not touched.",
)
@click.option("--no-config-toml", is_flag=True, help="Write hosts.toml only.")
@click.option(
    "--containerd-version",
    "major",
    type=click.IntRange(1, None),
    default=None,
    help="containerd major version for a new config.toml (default: ask `containerd`).",
)
@click.option("--print", "print_only", is_flag=True, help="Print the files, write nothing.")
def containerd(
    registry: str,
    hosts_dir: str,
    mirror_url: str,
    server: str | None,
    no_fallback: bool,
    config_toml: str | None,
    no_config_toml: bool,
    major: int | None,
    print_only: bool,
) -> None:
    """Write HOSTS_DIR/REGISTRY/hosts.toml and set config_path in containerd's config.toml
    (containerd 1.x and 2.x; existing files are kept as .rayfly-orig)."""
    if config_toml is None and hosts_dir == runtimes.DEFAULT_HOSTS_DIR:
        config_toml = DEFAULT_CONFIG_TOML
    try:
        hosts = runtimes.containerd_hosts_toml(registry, mirror_url, server, not no_fallback)
        merged = None
        if config_toml and not no_config_toml:
            path = Path(config_toml)
            existing = path.read_text() if path.exists() else None
            major = major if major is not None else installed_containerd_major()
            merged = with_config_path(existing, hosts_dir, major)
        if print_only:
            click.echo(hosts, nl=False)
            if merged is not None:
                click.echo(f"\n# {config_toml}\n{merged}", nl=False)
            return
        written = runtimes.write_containerd_hosts(
            registry, hosts_dir, mirror_url, server, not no_fallback
        )
        click.echo(f"wrote {written}")
        if merged is not None:
            runtimes.write_keeping_original(Path(config_toml), merged)
            click.echo(f"wrote {config_toml} (restart containerd to apply it)")
    except (RayflyError, OSError) as exc:
        fail(exc)


def _registries(registries: tuple[str, ...], mirror_url: str, write: str | None) -> None:
    try:
        text = runtimes.registries_conf(list(registries), mirror_url)
        if write:
            runtimes.write_keeping_original(Path(write), text)
            click.echo(f"wrote {write}")
        else:
            click.echo(text, nl=False)
    except RayflyError as exc:
        fail(exc)


_REG_HELP = (
    "Write this registries.conf drop-in (e.g. /etc/containers/registries.conf.d/rayfly.conf)."
)


def _registries_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options of the registries.conf writers (CRI-O, podman)."""
    for option in reversed(
        [
            click.option(
                "--registry",
                "registries",
                multiple=True,
                default=[DOCKER_HUB],
                show_default=True,
                help="A registry whose pulls go through the mirror (repeatable).",
            ),
            click.option(
                "--mirror", "mirror_url", default=runtimes.DEFAULT_MIRROR, show_default=True
            ),
            click.option("--write", default=None, metavar="FILE", help=_REG_HELP),
        ]
    ):
        command = option(command)
    return command


@config.command()
@_registries_options
def crio(registries: tuple[str, ...], mirror_url: str, write: str | None) -> None:
    """Print (or write) a registries.conf mirror entry for CRI-O."""
    _registries(registries, mirror_url, write)


@config.command()
@_registries_options
def podman(registries: tuple[str, ...], mirror_url: str, write: str | None) -> None:
    """Print (or write) a registries.conf mirror entry for podman."""
    _registries(registries, mirror_url, write)


@config.command()
@click.option("--daemon-json", default="/etc/docker/daemon.json", show_default=True)
@click.option("--mirror", "mirror_url", default=runtimes.DEFAULT_MIRROR, show_default=True)
@click.option("--write", is_flag=True, help="Write the file (else print the merged JSON).")
def docker(daemon_json: str, mirror_url: str, write: bool) -> None:
    """The registry-mirrors entry of Docker's daemon.json (Docker Hub pulls only)."""
    try:
        if write:
            click.echo(f"wrote {runtimes.write_docker_daemon_json(daemon_json, mirror_url)}")
            return
        path = Path(daemon_json)
        existing = path.read_text() if path.exists() else None
        click.echo(runtimes.docker_daemon_json(existing, mirror_url), nl=False)
    except (RayflyError, OSError) as exc:
        fail(exc)

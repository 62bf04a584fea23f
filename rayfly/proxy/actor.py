"""The Proxy actor: one per node, pinned there, hosting the mirror's HTTP server in its loop.

Named ``rayfly-proxy-<node_id>`` in namespace ``rayfly``, detached, created with hard node
affinity (get-or-create, as Ray Serve manages its proxies). Its blob backend is the node's Peer
actor, so every blob pulled through any node's mirror leaves the upstream once per cluster.
Status calls never block on the server: they read counters.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection
from typing import Any

import aiohttp
import ray

from rayfly import metrics
from rayfly.actors import placement
from rayfly.config import PeerConfig, SchedulerConfig, from_env
from rayfly.errors import ClusterError
from rayfly.proxy.p2p import P2PBlobs
from rayfly.proxy.server import Mirror, MirrorSettings, make_clients, start_server
from rayfly.proxy.upstream import load_docker_config

PROXY_PREFIX = "rayfly-proxy-"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 65001


def proxy_name(node_id: str) -> str:
    """The actor name of a node's proxy."""
    return PROXY_PREFIX + node_id


@ray.remote(num_cpus=0)
class Proxy:
    """A node's registry mirror: ``start()`` binds the server, ``status()`` reports on it."""

    def __init__(
        self,
        node_id: str,
        settings: MirrorSettings,
        host: str,
        port: int,
        docker_config: str | None = None,
    ) -> None:
        self.node_id, self.settings = node_id, settings
        self.host, self.port = host, port
        self.docker_config = docker_config
        self.node_ip = ray.util.get_node_ip_address()
        self._runner: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._mirror: Mirror | None = None
        self._started_at = 0.0

    async def start(self) -> dict[str, Any]:
        """Start serving (idempotent); returns this node's endpoint."""
        if self._runner is None:
            creds = load_docker_config(self.docker_config) if self.docker_config else {}
            self._session = aiohttp.ClientSession()
            node = placement.NodeInfo(self.node_id, self.node_ip, "")
            peer_config = from_env(PeerConfig)
            peer = placement.get_or_create_peer(node, peer_config)
            scheduler = placement.get_scheduler(from_env(SchedulerConfig))
            clients = make_clients(self.settings, self._session, creds)
            info = await peer.info.remote()
            blobs = P2PBlobs(
                peer,
                scheduler,
                info.get("cache_dir"),
                self.settings.p2p_concurrency,
                get_peer=lambda: placement.get_or_create_peer(node, peer_config),
                session=self._session,
                piece_timeout_s=peer_config.piece_timeout_s,
            )
            self._mirror = Mirror(self.settings, clients, blobs)
            self._runner, self.port = await start_server(
                self._mirror, self.host, self.port, [metrics.mirror_middleware(self.node_id)]
            )
            self._started_at = time.time()
        return self.endpoint()

    def endpoint(self) -> dict[str, Any]:
        """Where this node's mirror listens."""
        return {
            "node_id": self.node_id,
            "node_ip": self.node_ip,
            "host": self.host,
            "port": self.port,
            "url": f"http://{self.host}:{self.port}",
        }

    def status(self) -> dict[str, Any]:
        """Endpoint, health and counters (requests, bytes served, from upstream, from peers)."""
        counters = self._mirror.snapshot() if self._mirror else {}
        return {
            **self.endpoint(),
            "healthy": self._runner is not None,
            "upstreams": sorted(self.settings.upstreams),
            "default_upstream": self.settings.default_upstream,
            "uptime_s": round(time.time() - self._started_at, 1) if self._started_at else 0,
            **counters,
        }

    async def stop(self) -> None:
        """Stop serving and close upstream connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def get_or_create_proxy(
    node: placement.NodeInfo,
    settings: MirrorSettings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    docker_config: str | None = None,
) -> Any:
    """The proxy actor of ``node``, pinned there with hard node affinity; created if missing."""
    return placement.node_actor(
        Proxy, proxy_name(node.node_id), node, node.node_id, settings, host, port, docker_config
    )


def ports_for(
    nodes: list[placement.NodeInfo], port: int, preferred: Collection[str] = ()
) -> dict[str, int]:
    """The port each node's mirror binds: ``port`` for the first node on each address, and a
    free one (0) for the others, since several simulated nodes on one machine cannot share a
    port. ``preferred`` nodes (the caller's, those already serving) come first."""
    ordered = sorted(nodes, key=lambda n: (n.node_id not in preferred, n.node_id))
    taken: set[str] = set()
    out: dict[str, int] = {}
    for n in ordered:
        out[n.node_id] = 0 if port and n.node_ip in taken else port
        taken.add(n.node_ip)
    return out


def start_mirrors(
    settings: MirrorSettings,
    nodes: list[placement.NodeInfo] | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    docker_config: str | None = None,
    timeout_s: float = 60.0,
) -> list[dict[str, Any]]:
    """Start a mirror on every node (all alive nodes by default); returns their endpoints.

    Nodes that share an address (simulated nodes on one machine) cannot share ``port``: the
    caller's node, else the first, gets it, and the others a free port (see :func:`ports_for`).
    """
    targets = nodes if nodes is not None else placement.alive_nodes()
    ports = ports_for(targets, port, {ray.get_runtime_context().get_node_id()})
    actors = [
        get_or_create_proxy(n, settings, host, ports[n.node_id], docker_config) for n in targets
    ]
    try:
        return ray.get([a.start.remote() for a in actors], timeout=timeout_s)
    except ray.exceptions.RayTaskError as exc:
        raise ClusterError(f"a mirror failed to start: {exc.cause or exc}") from None


def existing_proxies() -> dict[str, Any]:
    """Proxy actors that exist now, by node id (none is created)."""
    return placement.existing_node_actors(proxy_name)


def mirror_status(timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Each node's mirror status; a proxy that does not answer in time is reported unhealthy.

    ``last_answer`` is when the node's mirror last answered (now, or the keeper's record)."""
    from rayfly.proxy.keeper import kept_rows

    kept = kept_rows()
    refs = {node_id: actor.status.remote() for node_id, actor in existing_proxies().items()}
    out = []
    for node_id, (answer, error) in placement.gather(refs, timeout_s).items():
        if error is None:
            out.append({**answer, "last_answer": time.time()})
            continue
        last = kept.get(node_id, {}).get("last_answer") or None
        out.append({"node_id": node_id, "healthy": False, "error": error, "last_answer": last})
    return out


def stop_mirrors(timeout_s: float = 10.0) -> int:
    """Stop keeping mirrors (:mod:`rayfly.proxy.keeper`), then stop and remove every node's
    proxy actor; returns how many there were."""
    from rayfly.proxy.keeper import stop_keeper

    stop_keeper()
    proxies = existing_proxies()
    with contextlib.suppress(ray.exceptions.RayError):
        ray.get([a.stop.remote() for a in proxies.values()], timeout=timeout_s)
    for actor in proxies.values():
        ray.kill(actor)
    return len(proxies)

"""Mirrors that follow the cluster: the ``rayfly-mirrors`` actor keeps a mirror on every chosen
node, including nodes that join later and nodes whose mirror died, until ``rayfly mirror stop``.

One per cluster, detached, named, in namespace ``rayfly``, placed on the head node (its loss is
the cluster's loss). Every ``RAYFLY_MIRROR_INTERVAL_S`` seconds (default 5) it lists the alive
nodes, picks them with the ``--nodes`` selectors, and for each one asks the node's proxy for its
status; a node with no proxy, or whose proxy does not answer or died, gets one started. Per node:
*missing* -> *starting* -> *serving* (last answered at T) or *failed* (tried again next sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from rayfly.actors import placement
from rayfly.config import NAMESPACE, from_env
from rayfly.nodes import Spec
from rayfly.proxy.actor import get_or_create_proxy, ports_for
from rayfly.proxy.server import MirrorSettings

KEEPER_NAME = "rayfly-mirrors"
ANSWER_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class KeeperConfig:
    """How often the keeper looks for nodes without a mirror (``RAYFLY_MIRROR_INTERVAL_S``)."""

    mirror_interval_s: float = 5.0


@dataclass(frozen=True)
class MirrorSpec:
    """What ``rayfly mirror start`` asked for: settings, where to listen, which nodes."""

    settings: MirrorSettings
    host: str
    port: int
    docker_config: str | None = None
    nodes: Spec = "all"
    exclude_head: bool = False
    first_node: str = ""


@dataclass
class NodeMirror:
    """The keeper's record of one node's mirror."""

    endpoint: dict[str, Any] = field(default_factory=dict)
    last_answer: float = 0.0
    error: str | None = None


@ray.remote(num_cpus=0)
class MirrorKeeper:
    """Keeps a mirror on every chosen node; sweeps in the background."""

    def __init__(self, spec: MirrorSpec, config: KeeperConfig) -> None:
        self.spec = spec
        self.config = config
        self.nodes: dict[str, NodeMirror] = {}
        self._starting: dict[str, asyncio.Future[None]] = {}
        self.sweeps = 0
        self._loop = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a sweep that failed is tried again
                await self.sweep()
            await asyncio.sleep(self.config.mirror_interval_s)

    async def sweep(self) -> int:
        """Check every chosen node's mirror and start missing ones; returns how many started."""
        self.sweeps += 1
        alive = await asyncio.to_thread(placement.alive_nodes)
        chosen = placement.select_nodes(self.spec.nodes, alive, self.spec.exclude_head)
        for gone in set(self.nodes) - {n.node_id for n in alive}:
            del self.nodes[gone]
            self._starting.pop(gone, None)
        ports = self._ports(chosen)
        results = await asyncio.gather(*(self._ensure(n, ports[n.node_id]) for n in chosen))
        return sum(results)

    def _ports(self, chosen: list[placement.NodeInfo]) -> dict[str, int]:
        """Ports for :func:`ports_for`, nodes already serving (they keep theirs) and the
        caller's node first."""
        preferred = {nid for nid, r in self.nodes.items() if r.endpoint}
        return ports_for(chosen, self.spec.port, preferred | {self.spec.first_node})

    async def _ensure(self, node: placement.NodeInfo, port: int) -> bool:
        """Check one node's mirror. A node without a serving mirror gets ``start()`` called in
        the background (idempotent; it waits for a proxy whose worker is still starting). A
        serving one is asked for its status: a proxy slow to answer is left alone, one whose
        actor died is forgotten, and the next sweep starts a new one (its name is free)."""
        record = self.nodes.setdefault(node.node_id, NodeMirror())
        starting = self._starting.get(node.node_id)
        if starting is not None and not starting.done():
            return False
        spec = self.spec
        proxy = get_or_create_proxy(node, spec.settings, spec.host, port, spec.docker_config)
        if not record.endpoint:
            self._starting[node.node_id] = asyncio.ensure_future(self._start(proxy, record))
            return True
        try:
            status = await asyncio.wait_for(proxy.status.remote(), ANSWER_TIMEOUT_S)
        except asyncio.TimeoutError:
            record.error = f"no answer within {ANSWER_TIMEOUT_S:.0f}s"
            return False
        except Exception as exc:  # the actor died: start a new one next time
            record.endpoint, record.error = {}, f"{type(exc).__name__}: {exc}"[:300]
            return False
        if not status.get("healthy"):
            record.endpoint = {}
            return False
        record.endpoint, record.error = _endpoint(status), None
        record.last_answer = time.time()
        return False

    @staticmethod
    async def _start(proxy: Any, record: NodeMirror) -> None:
        try:
            record.endpoint = await proxy.start.remote()
            record.last_answer, record.error = time.time(), None
        except Exception as exc:  # tried again at the next sweep
            record.error = f"{type(exc).__name__}: {exc}"[:300]

    async def wait_started(self, timeout_s: float) -> list[dict[str, Any]]:
        """Wait for the mirrors being started (at most ``timeout_s``); rows of those serving."""
        pending = [t for t in self._starting.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        return self.rows()

    def rows(self) -> list[dict[str, Any]]:
        """Each kept node's endpoint, when its mirror last answered, and its last error."""
        return [
            {"node_id": nid, **r.endpoint, "last_answer": r.last_answer, "keeper_error": r.error}
            for nid, r in self.nodes.items()
        ]

    def stop(self) -> None:
        """Stop sweeping (the caller then removes the actor and the mirrors)."""
        self._loop.cancel()


def _endpoint(status: dict[str, Any]) -> dict[str, Any]:
    return {k: status[k] for k in ("node_ip", "host", "port", "url") if k in status}


def get_keeper() -> Any:
    """The running keeper actor, or None."""
    try:
        return ray.get_actor(KEEPER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def keep_mirrors(spec: MirrorSpec) -> list[dict[str, Any]]:
    """Start (or replace) the keeper for ``spec``, run its first sweep and wait for the mirrors
    it starts; returns a row per chosen node (``url``, or ``keeper_error`` when it failed)."""
    stop_keeper()
    keeper = MirrorKeeper.options(
        name=KEEPER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        scheduling_strategy=placement.on_head(),
    ).remote(spec, from_env(KeeperConfig))
    ray.get(keeper.sweep.remote(), timeout=120)
    return ray.get(keeper.wait_started.remote(120), timeout=150)


def stop_keeper() -> bool:
    """Stop and remove the keeper; returns whether there was one."""
    keeper = get_keeper()
    if keeper is None:
        return False
    with contextlib.suppress(ray.exceptions.RayError):
        ray.get(keeper.stop.remote(), timeout=10)
    ray.kill(keeper)
    return True


def kept_rows() -> dict[str, dict[str, Any]]:
    """The keeper's per-node records (empty without a keeper)."""
    keeper = get_keeper()
    if keeper is None:
        return {}
    with contextlib.suppress(ray.exceptions.RayError):
        return {r["node_id"]: r for r in ray.get(keeper.rows.remote(), timeout=10)}
    return {}

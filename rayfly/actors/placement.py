"""Where actors live: the cluster's scheduler, and one peer per alive node (joining nodes too).

Cluster-wide actors (the scheduler, the pinner) live on the head node, whose loss is the
cluster's loss anyway: a worker node's death never takes them with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayfly.actors.peer import Peer
from rayfly.actors.scheduler import Scheduler
from rayfly.config import NAMESPACE, PEER_PREFIX, SCHEDULER_NAME, PeerConfig, SchedulerConfig
from rayfly.errors import ClusterError
from rayfly.nodes import HEAD_RESOURCE, NodeInfo, match_node, select_nodes


def alive_nodes() -> list[NodeInfo]:
    """Every alive node of the connected cluster, in a stable order."""
    nodes = [
        NodeInfo(
            n["NodeID"],
            n.get("NodeManagerAddress", ""),
            n.get("NodeManagerHostname", ""),
            dict(n.get("Labels") or {}),
            dict(n.get("Resources") or {}),
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]
    return sorted(nodes, key=lambda n: n.node_id)


def head_node_id() -> str:
    """The Ray node id of the cluster's head node."""
    for n in ray.nodes():
        if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {}):
            return n["NodeID"]
    raise ClusterError("the Ray cluster has no alive head node; is the cluster up?")


def on_head() -> NodeAffinitySchedulingStrategy:
    """Hard affinity to the head node (a restarted actor comes back there)."""
    return NodeAffinitySchedulingStrategy(node_id=head_node_id(), soft=False)


def get_scheduler(config: SchedulerConfig | None = None) -> Any:
    """The cluster's scheduler actor, created (detached, in namespace ``rayfly``, on the head
    node) if missing."""
    return Scheduler.options(
        name=SCHEDULER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_concurrency=10_000,
        scheduling_strategy=on_head(),
    ).remote(config or SchedulerConfig())


def node_actor(actor_class: Any, name: str, node: NodeInfo, *args: Any) -> Any:
    """The detached actor ``name`` (namespace ``rayfly``) of ``actor_class`` on ``node``, pinned
    there with hard node affinity; created with ``args`` if missing."""
    strategy = NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=False)
    return actor_class.options(
        name=name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=strategy,
        max_concurrency=1000,
    ).remote(*args)


def existing_node_actors(name_of: Callable[[str], str]) -> dict[str, Any]:
    """The per-node actors named ``name_of(node_id)`` that exist now on alive nodes, by node id
    (none is created)."""
    out = {}
    for node in alive_nodes():
        try:
            out[node.node_id] = ray.get_actor(name_of(node.node_id), namespace=NAMESPACE)
        except ValueError:
            continue
    return out


def gather(refs: dict[str, Any], timeout_s: float) -> dict[str, tuple[Any, str | None]]:
    """Each key's ``(answer, None)``, or ``(None, error)`` for an actor that failed (the error's
    type name) or did not answer within ``timeout_s`` seconds (all waited for together)."""
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    out: dict[str, tuple[Any, str | None]] = {}
    for key, ref in refs.items():
        if ref not in ready:
            out[key] = (None, f"no answer within {timeout_s}s")
            continue
        try:
            out[key] = (ray.get(ref), None)
        except ray.exceptions.RayError as exc:
            out[key] = (None, type(exc).__name__)
    return out


def peer_name(node_id: str) -> str:
    """The name of the peer actor of ``node_id``."""
    return PEER_PREFIX + node_id


def get_or_create_peer(node: NodeInfo, config: PeerConfig | None = None) -> Any:
    """The peer actor of ``node``, pinned there with hard node affinity; created if missing."""
    return node_actor(Peer, peer_name(node.node_id), node, node.node_id, config or PeerConfig())


def existing_peers() -> dict[str, Any]:
    """Peer actors that exist now, by node id (no actor is created)."""
    return existing_node_actors(peer_name)


__all__ = [
    "NodeInfo",
    "alive_nodes",
    "existing_node_actors",
    "existing_peers",
    "gather",
    "get_or_create_peer",
    "match_node",
    "node_actor",
    "select_nodes",
]

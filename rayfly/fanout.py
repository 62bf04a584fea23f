"""One fan-out: have the peer of each chosen node fetch a request, and collect their results.

:func:`fetch_everywhere` is what ``distribute`` and the image preheat do once their tasks are
registered; :func:`fetch_on` is one node's part of it (the pinner calls it per node).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from rayfly.actors import placement
from rayfly.actors.retry import backoff, call_sync, first_line, unwrap
from rayfly.config import NAMESPACE, PeerConfig
from rayfly.protocol import FetchRequest, NodeResult

ProgressFn = Callable[[int, int, int, int], None]
"""Called as ``progress(bytes_done, bytes_total, nodes_done, nodes_total)``."""

UNREACHABLE_WAIT_S = 60.0
"""How long the client keeps asking a peer that cannot be reached before giving up on its node
(a SIGKILLed node is declared dead by Ray within its health-check time, ~17 s by default)."""
NODE_TABLE_LAG_S = 5.0


def fetch_on(node: placement.NodeInfo, request: FetchRequest, config: PeerConfig) -> Any:
    """Start ``request`` on the peer of ``node`` (created if missing); its result's reference."""
    return placement.get_or_create_peer(node, config).fetch.remote(request)


def fetch_everywhere(
    request: FetchRequest,
    targets: list[placement.NodeInfo],
    scheduler: Any,
    config: PeerConfig,
    progress: ProgressFn | None = None,
    timeout: float | None = None,
) -> list[NodeResult]:
    """Have the peer of every node of ``targets`` fetch ``request`` (its tasks registered with
    ``scheduler``); one result per target, in order. A node that died, a peer that failed or
    did not finish within ``timeout`` seconds is a failed result, not an exception.

    The scheduler hears first how many nodes will fetch, so that the first to join keep what
    they read from the origin in memory for the others."""
    task_ids = [item.task.task_id for item in request.items]
    call_sync(lambda: ray.get(scheduler.expect.remote(task_ids, len(targets))), "expecting nodes")
    refs = {fetch_on(n, request, config): n for n in targets}
    return _collect(refs, scheduler, request, progress, timeout)


def _failed(node: placement.NodeInfo, error: str) -> NodeResult:
    return NodeResult(node.node_id, node.node_ip, node.hostname, "", error=error)


def _collect(
    refs: dict[Any, placement.NodeInfo],
    scheduler: Any,
    request: FetchRequest,
    progress: ProgressFn | None,
    timeout: float | None,
) -> list[NodeResult]:
    """Wait for every node, reporting progress; a dead node or peer becomes a failed node.

    A peer that cannot be reached is asked again (its download is single-flight, so a repeated
    fetch joins the running one) until it answers, its node is declared dead, or
    :data:`UNREACHABLE_WAIT_S` passes.
    """
    results: dict[str, NodeResult] = {}
    nodes = dict(refs)
    unreachable: dict[str, float] = {}
    pending = list(refs)
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.25)
        for ref in ready:
            node = nodes.pop(ref)
            outcome = _outcome(ref, node, scheduler, request, unreachable)
            if isinstance(outcome, NodeResult):
                results[node.node_id] = outcome
            else:
                nodes[outcome] = node
                pending.append(outcome)
        if progress is not None:
            _progress(progress, scheduler, request, refs, len(results))
        if deadline is not None and time.monotonic() > deadline and pending:
            for ref in pending:
                node = nodes[ref]
                results[node.node_id] = _failed(node, f"timed out after {timeout}s")
            break
    return [results[n.node_id] for n in refs.values()]


def _outcome(
    ref: Any,
    node: placement.NodeInfo,
    scheduler: Any,
    request: FetchRequest,
    unreachable: dict[str, float],
) -> NodeResult | Any:
    """A node's result, or a new fetch reference when its peer was briefly unreachable.

    A SIGKILLed node's peer is first unreachable (until Ray declares the node dead), then dead;
    Ray's node table may say so a moment after the actor table, hence the wait for it.
    """
    try:
        result: NodeResult = ray.get(ref)
        return result
    except RayTaskError as exc:
        return _failed(node, f"peer failed: {unwrap(exc)}")
    except RayActorError as exc:
        if isinstance(exc, ActorUnavailableError):
            first = unreachable.setdefault(node.node_id, time.monotonic())
            if _node_alive(node.node_id) and time.monotonic() - first < UNREACHABLE_WAIT_S:
                time.sleep(backoff(3))
                again = _fetch_again(node, request)
                if again is not None:
                    return again
        scheduler.peer_lost.remote(node.node_id)  # checked there: forgotten if gone
        lag = NODE_TABLE_LAG_S if node.node_id in unreachable else 0.0
        if _node_dead_within(node.node_id, lag):
            return _failed(node, f"node {node.node_id} died")
        return _failed(node, f"peer on node {node.node_id} failed: {first_line(exc)}")


def _fetch_again(node: placement.NodeInfo, request: FetchRequest) -> Any:
    """Ask the node's peer again (it joins its running download); None if it is gone."""
    try:
        peer = ray.get_actor(placement.peer_name(node.node_id), namespace=NAMESPACE)
        return peer.fetch.remote(request)
    except ValueError:
        return None


def _node_alive(node_id: str) -> bool:
    return any(n.get("NodeID") == node_id and n.get("Alive") for n in ray.nodes())


def _node_dead_within(node_id: str, seconds: float) -> bool:
    """True once Ray's node table says ``node_id`` is dead, looking for up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while _node_alive(node_id):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)
    return True


def _progress(
    progress: ProgressFn,
    scheduler: Any,
    request: FetchRequest,
    refs: dict[Any, placement.NodeInfo],
    nodes_done: int,
) -> None:
    """Report bytes held across the target nodes (skipped while the scheduler restarts)."""
    task_ids = [i.task.task_id for i in request.items]
    total = sum(i.task.length for i in request.items) * len(refs)
    try:
        done = ray.get(scheduler.progress.remote(task_ids), timeout=5)
    except (RayActorError, GetTimeoutError):
        return
    held = sum(done.get(n.node_id, 0) for n in refs.values())
    progress(min(total, held), total, nodes_done, len(refs))

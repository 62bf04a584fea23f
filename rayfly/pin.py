"""Pinned distributions: content that every node gets, including nodes that join later.

``rayfly distribute --pin`` distributes as usual, then records a *pin* with the ``Pinner``
actor (named ``rayfly-pins``, detached, one per cluster). The pinner sweeps the cluster's alive
nodes every ``pin_interval_s``; a node without the pinned content (a node that joined later,
or one that failed before) gets its peer asked to fetch it, from the other peers' caches as
usual. ``rayfly unpin PIN`` stops that; what nodes already hold stays where it is.

A pin's life: *active* (swept) -> removed by ``unpin``. Per node: *missing* -> *fetching* ->
*done*, or *failed* (tried again after a delay that doubles, up to 5 minutes). Pins are kept in
Ray's GCS key-value store (``rayfly/pins/<pin id>``): the pinner lives on the head node and is
restarted if it dies, reloads them and sweeps again; they end with the cluster or ``unpin``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayTaskError

from rayfly import durable, source
from rayfly.actors import placement
from rayfly.actors.gcs_store import GcsStore
from rayfly.actors.retry import unwrap
from rayfly.config import NAMESPACE, PeerConfig, SchedulerConfig, from_env
from rayfly.errors import InvalidInput, TaskNotFound
from rayfly.fanout import fetch_on
from rayfly.filters import FileFilter
from rayfly.protocol import FetchRequest

PINNER_NAME = "rayfly-pins"


@dataclass(frozen=True)
class PinConfig:
    """How often the pinner looks for nodes lacking pinned content (``RAYFLY_PIN_INTERVAL_S``)."""

    pin_interval_s: float = 5.0


@dataclass(frozen=True)
class Pin:
    """A distribution kept alive for nodes that join later."""

    pin_id: str
    source: str
    dest: str
    request: FetchRequest
    peer_config: PeerConfig
    created: float


@dataclass
class PinState:
    """The pinner's record of one pin: which nodes hold it, which are fetching, which failed."""

    pin: Pin
    done: set[str] = field(default_factory=set)
    fetching: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The pin as plain data."""
        return {
            "pin_id": self.pin.pin_id,
            "source": self.pin.source,
            "dest": self.pin.dest,
            "task_ids": [i.task.task_id for i in self.pin.request.items],
            "nodes_done": sorted(self.done),
            "nodes_fetching": sorted(self.fetching),
            "errors": dict(self.errors),
            "created": self.pin.created,
        }


def pin_id_of(task_ids: list[str], dest: str) -> str:
    """A short stable id for pinning these tasks at ``dest``."""
    return hashlib.sha256(("\n".join(sorted(task_ids)) + "\n" + dest).encode()).hexdigest()[:12]


@ray.remote(num_cpus=0, max_restarts=-1)
class Pinner:
    """Keeps pinned distributions on every alive node; sweeps in the background.

    Pins are kept in Ray's GCS key-value store; a restarted pinner reloads them and sweeps.
    """

    def __init__(self, config: PinConfig) -> None:
        self.config = config
        self.kv: durable.KeyValue = GcsStore()
        self.pins = {pid: PinState(p) for pid, p in durable.load_all(self.kv, durable.PINS).items()}
        self._loop: asyncio.Task[None] | None = None
        self.sweeps = 0
        if self.pins:
            ray.get_runtime_context().current_actor.start.remote()

    async def start(self) -> None:
        """Start the sweeper if it is not running (pins reloaded after a restart)."""
        self._ensure_sweeper()

    def _ensure_sweeper(self) -> None:
        if self.pins and (self._loop is None or self._loop.done()):
            self._loop = asyncio.ensure_future(self._run())

    async def add(self, pin: Pin, nodes_done: list[str]) -> dict[str, Any]:
        """Pin (or re-pin) ``pin``; ``nodes_done`` already hold it. Starts the sweeper."""
        state = self.pins.get(pin.pin_id) or PinState(pin)
        state.done |= set(nodes_done)
        self.pins[pin.pin_id] = state
        durable.save(self.kv, durable.PINS, pin.pin_id, pin)
        self._ensure_sweeper()
        return state.row()

    def remove(self, key: str) -> list[str]:
        """Unpin by pin id, task id or source URL; returns the pin ids removed."""
        gone = [pid for pid, s in self.pins.items() if _matches(s, key)]
        if not gone:
            known = ", ".join(sorted(self.pins)) or "none"
            raise TaskNotFound(f"no pin matches {key!r} (pins: {known}); see `rayfly status`")
        for pid in gone:
            for job in self.pins.pop(pid).fetching.values():
                job.cancel()
            durable.drop(self.kv, durable.PINS, pid)
        return gone

    async def list(self) -> list[dict[str, Any]]:
        """Every pin as plain data (and the sweeper running, should its start have been lost)."""
        self._ensure_sweeper()
        return [s.row() for s in self.pins.values()]

    async def _run(self) -> None:
        while self.pins:
            await self.sweep()
            await asyncio.sleep(self.config.pin_interval_s)

    async def sweep(self) -> int:
        """Start fetches on alive nodes that lack a pin; returns how many were started."""
        self.sweeps += 1
        nodes = await asyncio.to_thread(placement.alive_nodes)
        started = 0
        for state in list(self.pins.values()):
            for node in nodes:
                if node.node_id in state.done or node.node_id in state.fetching:
                    continue
                if state.retry_at.get(node.node_id, 0.0) > time.monotonic():
                    continue
                job = asyncio.ensure_future(self._fetch(state, node))
                state.fetching[node.node_id] = job
                started += 1
        return started

    async def _fetch(self, state: PinState, node: placement.NodeInfo) -> None:
        try:
            result = await fetch_on(node, state.pin.request, state.pin.peer_config)
            if result.ok:
                state.done.add(node.node_id)
                for record in (state.errors, state.failures, state.retry_at):
                    record.pop(node.node_id, None)
            else:
                self._failed(state, node.node_id, result.error or "failed")
        except Exception as exc:  # a node that left, a peer that died: retried later
            self._failed(state, node.node_id, f"{type(exc).__name__}: {exc}")
        finally:
            state.fetching.pop(node.node_id, None)

    def _failed(self, state: PinState, node_id: str, error: str) -> None:
        """Record a failure; the node is tried again after a doubling delay (at most 5 min)."""
        n = state.failures[node_id] = state.failures.get(node_id, 0) + 1
        state.errors[node_id] = error
        delay = min(300.0, self.config.pin_interval_s * 2 ** (n - 1))
        state.retry_at[node_id] = time.monotonic() + delay


def _matches(state: PinState, key: str) -> bool:
    p = state.pin
    tasks = [i.task.task_id for i in p.request.items]
    return key in (p.pin_id, p.source) or key in tasks or p.source.rstrip("/") == key.rstrip("/")


def get_pinner(create: bool = True) -> Any:
    """The cluster's pinner actor (created if missing and ``create``; else None if missing)."""
    if not create:
        try:
            return ray.get_actor(PINNER_NAME, namespace=NAMESPACE)
        except ValueError:
            return None
    return Pinner.options(
        name=PINNER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=placement.on_head(),
    ).remote(from_env(PinConfig))


def pin(
    source_url: str,
    dest: str,
    nodes_done: list[str],
    *,
    storage_options: dict[str, Any] | None = None,
    tag: str = "",
    sha256: str | None = None,
    piece_size: int | None = None,
    concurrency: int | None = None,
    source_node: str | None = None,
    files_filter: FileFilter | None = None,
) -> dict[str, Any]:
    """Pin a distribution (call after ``distribute`` on a connected cluster); returns the pin.

    ``source_node`` is as for :func:`rayfly.api.distribute` (a local path's node)."""
    from rayfly import api

    if not dest:
        raise InvalidInput("--pin needs --dest: late-joining nodes write the content there")
    options = dict(storage_options or {})
    peer_config = from_env(PeerConfig)
    scheduler = placement.get_scheduler(from_env(SchedulerConfig))
    try:
        items = api.plan(
            source_url, options, tag, sha256, piece_size, scheduler, source_node, files_filter
        )
    except RayTaskError as exc:
        raise unwrap(exc) from None
    request = FetchRequest(items, dest, concurrency or peer_config.concurrency)
    record = Pin(
        pin_id_of([i.task.task_id for i in items], dest),
        source.redact_url(source_url),
        dest,
        request,
        peer_config,
        time.time(),
    )
    return ray.get(get_pinner().add.remote(record, nodes_done))


def unpin(key: str) -> list[str]:
    """Remove the pin(s) matching ``key`` (pin id, task id or source URL); their ids."""
    pinner = get_pinner(create=False)
    if pinner is None:
        raise TaskNotFound(f"no pin matches {key!r}: nothing is pinned on this cluster")
    try:
        return ray.get(pinner.remove.remote(key))
    except RayTaskError as exc:
        raise unwrap(exc) from None


def list_pins() -> list[dict[str, Any]]:
    """Every pin of the connected cluster."""
    pinner = get_pinner(create=False)
    return [] if pinner is None else ray.get(pinner.list.remote(), timeout=10)

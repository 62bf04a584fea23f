"""The Scheduler actor: a thin Ray wrapper around :class:`rayfly.scheduler_core.SchedulerCore`.

One per cluster, on the head node. It adds what needs Ray: single-flight task registration (a stat
of the origin when the client gave no listing), the GCS key-value store that outlives a restart,
the node table watch that forgets the peers of dead nodes, and the check of a peer's incarnation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from rayfly import source
from rayfly.actors.gcs_store import GcsStore
from rayfly.config import NAMESPACE, PEER_PREFIX, SchedulerConfig
from rayfly.errors import InvalidInput
from rayfly.protocol import Batch, Cached, Done, Failed
from rayfly.scheduler_core import SchedulerCore
from rayfly.task import MIN_PIECE, PieceLimits, SourceSpec, TaskInfo, info_for
from rayfly.version import identity

PEER_CHECK_TIMEOUT_S = 10.0
NODE_WATCH_PERIOD_S = 1.0

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1)
class Scheduler:
    """Ray actor wrapping :class:`SchedulerCore`; single-flight task registration.

    Restarted (``max_restarts=-1``), it reloads the registered tasks from Ray's GCS key-value
    store and asks the peers that exist to announce what they hold; peers in the middle of a
    task are told to rejoin by their next exchange. It watches the node table and forgets the
    peers of dead nodes.
    """

    def __init__(self, config: SchedulerConfig):
        self.core = SchedulerCore(config, kv=GcsStore())
        self._watch: asyncio.Task[None] | None = None
        self._asked: asyncio.Task[None] | None = None
        ray.get_runtime_context().current_actor.start.remote()

    async def start(self) -> None:
        """Start watching nodes; after a restart, ask the existing peers what they hold.

        Called by the actor on itself when it starts, and by the first calls after (a call an
        actor makes on itself while Ray still marks it restarting may be lost)."""
        if self._watch is not None:
            return
        self._watch = asyncio.ensure_future(self._watch_nodes())
        if self.core.tasks:
            self._asked = asyncio.ensure_future(self._ask_announcements())

    async def _ask_announcements(self) -> None:
        """Ask every existing peer to announce its complete entries of the known tasks."""
        peers = await asyncio.to_thread(_existing_peers)
        for peer in peers:
            peer.announce.remote(list(self.core.tasks))

    async def _watch_nodes(self) -> None:
        """Forget the peers of nodes the cluster declared dead (the peer id is the node id)."""
        while True:
            await asyncio.sleep(NODE_WATCH_PERIOD_S)
            if not self.core.peers:
                continue
            try:
                nodes = await asyncio.to_thread(ray.nodes)
            except Exception as exc:  # the GCS briefly unreachable: look again later
                log.warning("cannot read the node table: %s", exc)
                continue
            for n in nodes:
                if not n.get("Alive") and n.get("NodeID") in self.core.peers:
                    log.warning("node %s died: forgetting its peer", n["NodeID"])
                    self.core.peer_lost(n["NodeID"])

    def announce(
        self,
        peer_id: str,
        host: str,
        slots: int,
        incarnation: str,
        have: dict[str, Cached],
        upload_rate: float | None = None,
    ) -> list[str]:
        """See :meth:`SchedulerCore.announce`."""
        return self.core.announce(peer_id, host, slots, incarnation, have, upload_rate)

    async def register(
        self,
        spec: SourceSpec,
        piece_size: int | None = None,
        order: str | None = None,
        listed: source.SourceFile | None = None,
        piece_floor: int = MIN_PIECE,
    ) -> TaskInfo:
        """The task for ``spec``; concurrent and later calls for the same task share one.

        ``listed``: the file as the client's listing found it (size, version, ranges): no
        request to the origin here. Without it the origin is stat'ed once, and, unless ``spec``
        names its task id, the version found is folded into the id (:func:`version.identity`);
        a node-local file (``spec.source_node``) must come listed by its node. ``order``: the
        piece policy (None: the scheduler's configured one, ``RAYFLY_POLICY``).
        ``piece_floor``: the smallest default piece on fast links (:func:`default_piece_size`).
        """
        if spec.task_id is not None and (known := self._registered(spec.resolved_task_id())):
            return known
        if listed is None:
            if spec.source_node is not None:
                raise InvalidInput(f"{spec.url} is node-local: register it with its listing")
            listed = await asyncio.to_thread(source.stat_file, spec.url, spec.storage_options)
            if spec.task_id is None:
                version = identity(listed.version, spec.tag, spec.expected_sha256)
                spec = dataclasses.replace(spec, version=version)
        task_id = spec.resolved_task_id()
        if (known := self._registered(task_id)) is not None:
            return known  # no await since the check: the actor's one thread makes it single-flight
        limits = self.core.piece_limits()
        info = info_for(spec, listed.size, listed.ranges, piece_size, limits, piece_floor)
        self.core.add_task(info, order)
        return info

    def register_tasks(self, infos: list[TaskInfo], order: str | None = None) -> list[TaskInfo]:
        """Many tasks the client fixed itself (:func:`rayfly.task.info_for`, packs) in one call:
        each the registered one of its id if there is one, else recorded as given."""
        out = []
        for info in infos:
            known = self._registered(info.task_id)
            if known is None:
                self.core.add_task(info, order)
            out.append(known or info)
        return out

    def piece_limits(self) -> PieceLimits | None:
        """See :meth:`SchedulerCore.piece_limits`."""
        return self.core.piece_limits()

    def expect(self, task_ids: list[str], members: int) -> None:
        """``members`` nodes are about to fetch these tasks (:meth:`SchedulerCore.expect`)."""
        for task_id in task_ids:
            self.core.expect(task_id, members)

    def held(self, task_id: str) -> TaskInfo | None:
        """See :meth:`SchedulerCore.held`."""
        return self.core.held(task_id)

    def holders(self, task_id: str) -> list[list[str]] | None:
        """See :meth:`SchedulerCore.holders`."""
        return self.core.holders(task_id)

    def _registered(self, task_id: str) -> TaskInfo | None:
        """The task ``task_id`` if it is registered and has not failed."""
        state = self.core.tasks.get(task_id)
        return state.info if state is not None and not state.error else None

    async def resolve(self, url: str, options: dict[str, Any]) -> list[source.SourceFile]:
        """Every file at ``url`` (one file, or all under a directory or prefix)."""
        return await asyncio.to_thread(source.list_files, url, options)

    async def join(
        self,
        task_id: str,
        peer_id: str,
        host: str,
        slots: int,
        have: dict[int, str] | None = None,
        incarnation: str = "",
        upload_rate: float | None = None,
        want: int = 0,
        wait: bool = False,
    ) -> Batch:
        """See :meth:`SchedulerCore.join`; with ``want`` the peer's first batch in the same
        call (:meth:`exchange` with nothing to report), one round trip per task less."""
        self.core.join(task_id, peer_id, host, slots, have, incarnation, upload_rate)
        if want <= 0:
            return Batch([])
        return await self.exchange(task_id, peer_id, [], [], want, wait)

    async def exchange(
        self,
        task_id: str,
        peer_id: str,
        done: list[Done],
        failed: list[Failed],
        want: int,
        wait: bool,
    ) -> Batch:
        """See :meth:`SchedulerCore.exchange`."""
        await self.start()
        return await self.core.exchange(task_id, peer_id, done, failed, want, wait)

    def finish(self, task_id: str, peer_id: str, error: str | None, fatal: bool = False) -> None:
        """See :meth:`SchedulerCore.finish`."""
        self.core.finish(task_id, peer_id, error, fatal)

    async def peer_lost(self, peer_id: str) -> bool:
        """A client saw ``peer_id``'s actor fail: forget it if it is really gone.

        The peer's actor is asked who it is; the peer is forgotten only when no actor answers for
        the node, or a different actor than the one that joined does. Returns True if forgotten.
        """
        known = self.core.peers.get(peer_id)
        if known is None:
            return False
        try:
            answer = await self._incarnation_of(peer_id)
        except (asyncio.TimeoutError, ActorUnavailableError):
            return False  # alive but busy or briefly unreachable: lease expiry covers it
        if answer == known.incarnation:
            return False
        self.core.peer_lost(peer_id, known.incarnation)
        return True

    @staticmethod
    async def _incarnation_of(peer_id: str) -> str | None:
        """The actor id now answering for ``peer_id``; None when no actor is there."""
        try:
            handle = ray.get_actor(PEER_PREFIX + peer_id, namespace=NAMESPACE)
        except ValueError:
            return None
        try:
            return await asyncio.wait_for(handle.incarnation.remote(), PEER_CHECK_TIMEOUT_S)
        except ActorUnavailableError:
            raise
        except RayActorError:
            return None

    async def progress(self, task_ids: list[str]) -> dict[str, int]:
        """See :meth:`SchedulerCore.progress`."""
        await self.start()
        return self.core.progress(task_ids)

    async def status(self) -> list[dict[str, Any]]:
        """See :meth:`SchedulerCore.status`."""
        await self.start()
        return self.core.status()

    def ping(self) -> bool:
        """Liveness check."""
        return True


def _existing_peers() -> list[Any]:
    """Handles of the peer actors of alive nodes (none is created)."""
    from rayfly.actors.placement import existing_peers

    return list(existing_peers().values())

"""A peer's links to the rest of the cluster: the scheduler (called with retries while it
restarts) and the other nodes' peers (handles cached, looked up again when replaced), and which
of those peers keep their piece store where this process can read it (the same host)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from rayfly.actors.retry import call_async
from rayfly.config import NAMESPACE, PEER_PREFIX, SCHEDULER_NAME


class ParentGone(Exception):
    """The parent's actor no longer exists."""


def visible_store(view: dict[str, Any], node_ip: str) -> Path | None:
    """The root of another peer's piece store if this process can read it directly: the peer
    is on this host (same node IP; separate hosts may share a filesystem) and the store is the
    very one it uses (same device and inode at its path: a private mount shows another or
    none); else None."""
    if view.get("node_ip") != node_ip:
        return None
    try:
        st = os.stat(view["root"])
    except (OSError, KeyError, TypeError):
        return None
    return Path(view["root"]) if (st.st_dev, st.st_ino) == (view["dev"], view["ino"]) else None


class Links:
    """Handles to the scheduler and to other peers, looked up lazily and forgotten on error."""

    def __init__(self, scheduler: Any = None) -> None:
        self._scheduler: Any = scheduler  # a handle to start with (else looked up by name)
        self._handles: dict[str, Any] = {}
        self._stores: dict[str, Path | None] = {}

    def scheduler(self) -> Any:
        """The scheduler's handle (ValueError when there is none yet)."""
        if self._scheduler is None:
            self._scheduler = ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
        return self._scheduler

    async def ask(self, method: str, *args: Any) -> Any:
        """Call the scheduler; while it restarts, retry with backoff (see :mod:`retry`),
        looking its handle up again each time."""

        def forget() -> None:
            self._scheduler = None

        return await call_async(
            lambda: getattr(self.scheduler(), method).remote(*args), repr(method), forget
        )

    def peer(self, peer_id: str) -> Any:
        """The peer actor of node ``peer_id`` (:class:`ParentGone` when it has none)."""
        if peer_id not in self._handles:
            try:
                self._handles[peer_id] = ray.get_actor(PEER_PREFIX + peer_id, namespace=NAMESPACE)
            except ValueError:
                raise ParentGone(f"no peer actor for node {peer_id}") from None
        return self._handles[peer_id]

    async def store_of(self, peer_id: str, node_ip: str) -> Path | None:
        """The root of ``peer_id``'s piece store when this process can read it directly (see
        :func:`visible_store`), else None; asked once per peer incarnation."""
        if peer_id not in self._stores:
            view = await self.peer(peer_id).store_view.remote()
            self._stores[peer_id] = visible_store(view, node_ip)
        return self._stores[peer_id]

    def forget(self, peer_id: str | None) -> None:
        """Drop a cached peer handle (its actor may have been replaced)."""
        self._handles.pop(peer_id or "", None)
        self._stores.pop(peer_id or "", None)

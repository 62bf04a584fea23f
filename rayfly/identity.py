"""A node's cache identity: which piece store in the node's cache directory is this peer's.

The cache directory is the node's own (``RAYFLY_CACHE_DIR`` in the environment of the node's
raylet, which Ray's workers inherit; see :func:`rayfly.config.node_cache_dir`). It survives a
restart of the node, which comes back with a new Ray node id; so the store is keyed by an id kept
in that directory, not by the Ray node id::

    <dir>/cache-id               the node's cache id: a uuid written on the first start
    <dir>/<cache id>/lock        flock()ed by the live peer that uses the store; holds its pid,
                                 Ray node id and host (for messages)
    <dir>/<cache id>/tasks/...   the piece store (:mod:`rayfly.storage`)
    <dir>/.lock                  held for a moment while a peer picks its store and collects

Two live peers must never share a store. A peer that finds the node's store locked by another
live peer (two nodes given one directory: a misconfiguration) waits a little (30 s when the
holder may be exiting: its own node's previous actor, or a process of a dead node; else 2 s),
then falls back to a store of its own under a new id: it works, but starts cold after each
restart (``shared`` says so; give each node its own directory). Collected on every start: stores
of the current layout that no live peer holds, except the node's own; stores of the previous
layout (``<dir>/<Ray node id>``, no lock) whose Ray node id is not alive. Nothing else in the
directory is touched. Knows nothing of Ray.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Set
from dataclasses import dataclass
from pathlib import Path

from rayfly.errors import StorageError

ID_FILE = "cache-id"
LOCK_FILE = "lock"
ROOT_LOCK = ".lock"
OWN_NODE_WAIT_S = 30.0  # the node's previous peer actor may take this long to exit
OTHER_WAIT_S = 2.0
_CURRENT = re.compile(r"^[0-9a-f]{32}$")
_PREVIOUS = re.compile(r"^[0-9a-f]{56}$")  # Ray node ids: the layout before cache ids

log = logging.getLogger(__name__)


@dataclass
class NodeCache:
    """The store this peer holds, and the lock that keeps it its own while the process lives."""

    root: Path
    cache_id: str
    shared: bool
    collected: list[str]
    lock_fd: int

    @property
    def store_dir(self) -> Path:
        """Where the piece store lives."""
        return self.root / self.cache_id


def _try_lock(path: Path, create: bool) -> int | None:
    """An fd of ``path`` holding an exclusive flock, or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


@contextlib.contextmanager
def _root_locked(root: Path, timeout: float = 60.0) -> Iterator[None]:
    deadline = time.monotonic() + timeout
    while (fd := _try_lock(root / ROOT_LOCK, create=True)) is None:
        if time.monotonic() > deadline:
            raise StorageError(f"cache directory {root} stayed locked for {timeout:.0f}s")
        time.sleep(0.05)
    try:
        yield
    finally:
        os.close(fd)


def _node_id_file(root: Path) -> str:
    """The directory's cache id, created on first use (call with the root lock held)."""
    path = root / ID_FILE
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if _CURRENT.match(text):
            return text
    cache_id = uuid.uuid4().hex
    tmp = root / f".{ID_FILE}.{cache_id}"
    tmp.write_text(cache_id + "\n")
    os.replace(tmp, path)
    return cache_id


def _holder(store: Path) -> dict[str, object]:
    """Who holds a store's lock, as it wrote it ({} when unknown)."""
    try:
        raw = json.loads((store / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _take(root: Path, cache_id: str, owner: dict[str, object]) -> int | None:
    """Lock store ``cache_id`` (created if missing) and sign the lock; None if held."""
    store = root / cache_id
    store.mkdir(exist_ok=True)
    fd = _try_lock(store / LOCK_FILE, create=True)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
    return fd


def collect(root: Path, keep: Set[str], alive_nodes: Set[str]) -> list[str]:
    """Delete stores nobody owns (see the module's rules); returns the names removed.

    Call with the root lock held. ``keep``: store names never removed (the node's own);
    ``alive_nodes``: Ray node ids of live nodes (their previous-layout stores stay).
    """
    removed = []
    for d in sorted(root.iterdir()):
        name = d.name
        if name in keep or not d.is_dir() or d.is_symlink():
            continue
        if _PREVIOUS.match(name) and name not in alive_nodes and _previous_layout(d):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(name)
        elif _CURRENT.match(name) and (fd := _try_lock(d / LOCK_FILE, create=False)) is not None:
            try:
                shutil.rmtree(d, ignore_errors=True)
            finally:
                os.close(fd)
            removed.append(name)
    return removed


def _previous_layout(d: Path) -> bool:
    """A store of the layout before cache ids: a ``tasks`` directory, no lock."""
    return (d / "tasks").is_dir() and not (d / LOCK_FILE).exists()


def open_node_cache(
    root: str | Path,
    owner: dict[str, object],
    alive_nodes: Set[str] = frozenset(),
    wait_s: float | None = None,
) -> NodeCache:
    """Take this node's store in ``root`` (see the module's docstring) and collect stale ones.

    ``owner`` is written into the lock (``node_id``: the Ray node id of the caller); ``wait_s``
    overrides how long a held store is waited for. The lock lasts as long as the returned
    ``lock_fd`` (the process) does.
    """
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        return _acquire(root, owner, alive_nodes, wait_s)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(
            f"cannot use the cache directory {root}: {exc.strerror or exc}; set "
            "RAYFLY_CACHE_DIR in the node's environment (its raylet's) to a writable directory"
        ) from exc


def _acquire(
    root: Path, owner: dict[str, object], alive: Set[str], wait_s: float | None
) -> NodeCache:
    deadline: float | None = None
    while True:  # bounded by the deadline
        with _root_locked(root):
            own = _node_id_file(root)
            fd = _take(root, own, owner)
            if fd is not None:
                return _opened(root, own, fd, False, alive)
            holder = _holder(root / own)
            if deadline is None:
                wait = _wait_for(holder, owner, alive) if wait_s is None else wait_s
                deadline = time.monotonic() + wait
            if time.monotonic() >= deadline:
                fresh = uuid.uuid4().hex
                fd = _take(root, fresh, owner)
                assert fd is not None, "a new store is nobody else's"
                log.warning(
                    "cache directory %s is in use by another live peer (%s): this peer uses a "
                    "temporary store %s; give each node its own RAYFLY_CACHE_DIR",
                    root,
                    holder or "unknown",
                    fresh,
                )
                return _opened(root, fresh, fd, True, alive, keep=own)
        time.sleep(0.2)


def _wait_for(holder: dict[str, object], owner: dict[str, object], alive: Set[str]) -> float:
    """How long to wait for a held store: long while the holder may be exiting (this node's
    previous actor, or a process of a node that is dead), briefly for another live node."""
    node = holder.get("node_id")
    exiting = node == owner.get("node_id") or node not in alive
    return OWN_NODE_WAIT_S if exiting else OTHER_WAIT_S


def _opened(
    root: Path, cache_id: str, fd: int, shared: bool, alive: Set[str], keep: str = ""
) -> NodeCache:
    collected = collect(root, {cache_id, keep}, alive)
    if collected:
        log.info("collected stale stores in %s: %s", root, ", ".join(collected))
    return NodeCache(root, cache_id, shared, collected, fd)

"""A node's piece store: one data file per task, its space reserved when the task begins
(:mod:`rayfly.reserve`), pieces verified on the way in.

Layout under ``root``::

    tasks/<task_id>/data        the task's bytes, written piece by piece (pwrite)
    tasks/<task_id>/meta.json   written once, atomically, when the task is complete and verified

A task without ``meta.json`` is incomplete; incomplete tasks left by a crash are removed on start,
so a cache entry is either whole and verified or absent. Completed data files are made read-only:
destinations hard-link them. The store knows nothing of Ray or networks.

With ``direct_io``, pieces whose offset and length fall on a page (:data:`~rayfly.piecemem.PAGE`,
what ``O_DIRECT`` needs of offsets, lengths and buffers) are written with ``O_DIRECT``, past the
page cache (a buffer that does not start on a page, as pieces in Ray's
object store do, through an aligned copy): on the VMs measured here a buffered write costs
1.6-2.3 CPU-s per GiB when the kernel has to find fresh pages, a direct one 0.03
(docs/BENCHMARKS.md). Anything else (a short last piece, a filesystem that refuses
``O_DIRECT``) is written through the page cache as before.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from rayfly.errors import CacheFull, PieceCorrupt, PieceUnavailable, StorageError
from rayfly.eviction import Candidate, Disk, Eviction, GcPlan, GcPolicy, may_evict, plan_gc
from rayfly.piecemem import BUFFERS, PAGE
from rayfly.reserve import no_room, reserve
from rayfly.task import Cut, validate_task_id


def aligned(view: memoryview, start: int, memory: bool = True) -> bool:
    """Whether ``view`` written at ``start`` meets ``O_DIRECT``'s alignment (:data:`PAGE`):
    offset, length and (with ``memory``) the buffer's address."""
    if start % PAGE or len(view) % PAGE or not len(view):
        return False
    return not memory or int(np.frombuffer(view, np.uint8).ctypes.data) % PAGE == 0


def piece_digest(data: Any) -> str:
    """The fast digest checked on every hop: xxh3-64 of the piece, as hex."""
    return xxhash.xxh3_64_hexdigest(data)


@dataclass
class TaskEntry:
    """What the store knows of one task."""

    task_id: str
    length: int
    piece_size: int
    have: set[int] = field(default_factory=set)
    digests: dict[int, str] = field(default_factory=dict)
    sha256: str | None = None
    complete: bool = False
    last_used: float = 0.0
    source: str = ""
    tail_split: int = 1  # an entry recorded before tails were cut has none

    @property
    def cut(self) -> Cut:
        """How the task is cut into pieces here."""
        return Cut(self.length, self.piece_size, self.tail_split)

    @property
    def n_pieces(self) -> int:
        """Number of pieces of the task."""
        return self.cut.n_pieces


def _parse_meta(meta: Path) -> TaskEntry:
    """The complete entry a task's ``meta.json`` records (raises when unreadable)."""
    raw = json.loads(meta.read_text())
    raw.pop("n_pieces", None)
    entry = TaskEntry(**raw)
    entry.digests = {int(k): v for k, v in entry.digests.items()}
    entry.have = set(range(entry.n_pieces))
    entry.last_used = meta.stat().st_mtime
    return entry


@dataclass
class _OpenFile:
    """A task's open data file (``direct``: the same file opened with ``O_DIRECT``, for
    aligned writes) and how many threads use it right now."""

    fd: int
    direct: int | None = None
    users: int = 0
    retired: bool = False

    def close(self) -> None:
        """Close the file's descriptors."""
        os.close(self.fd)
        if self.direct is not None:
            os.close(self.direct)


class PieceStore:
    """Node-local storage of task pieces that cleans itself (:mod:`rayfly.eviction`): a TTL for
    unused entries, a byte quota and disk watermarks, least-recently-used first.

    Evictions made on the store's own initiative (to make room for a new task) are queued for
    the owner to report (:meth:`take_evictions`).
    """

    def __init__(
        self,
        root: str | Path,
        quota: int,
        clock: Callable[[], float] = time.time,
        policy: GcPolicy | None = None,
        direct_io: bool = False,
    ):
        self.root = Path(root)
        self.direct_io = direct_io
        self.direct_writes = 0  # pieces written past the page cache
        self.unreserved_files = 0  # tasks begun sparse: the filesystem has no fallocate
        self.policy = policy or GcPolicy(quota)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, TaskEntry] = {}
        self._reserved = 0  # the entries' lengths, summed (kept as they come and go)
        # at most the least recent use of a complete entry: uses only move forward, so it
        # stays a bound as entries are used and removed (see _oldest_use)
        self._oldest_bound: float | None = None
        self._fds: dict[str, _OpenFile] = {}
        self._evicted: list[Eviction] = []
        (self.root / "tasks").mkdir(parents=True, exist_ok=True)
        self._load()

    # --- lifecycle -------------------------------------------------------------------------
    def _dir(self, task_id: str) -> Path:
        return self.root / "tasks" / validate_task_id(task_id)

    def _load(self) -> None:
        for d in (self.root / "tasks").iterdir():
            try:
                entry = _parse_meta(d / "meta.json")
            except (OSError, ValueError, TypeError, KeyError):
                shutil.rmtree(d, ignore_errors=True)
                continue
            self._entries[entry.task_id] = entry
            self._reserved += entry.length
            self._bound_oldest(entry)

    @staticmethod
    def read_entry(root: str | Path, task_id: str) -> TaskEntry | None:
        """The complete, verified entry of ``task_id`` in the store at ``root``, or None.

        Read-only and without opening the store: for another process on the node (the mirror)
        that reads what the node's peer stored. Its data is at :meth:`data_path_at`.
        """
        try:
            entry = _parse_meta(Path(root) / "tasks" / validate_task_id(task_id) / "meta.json")
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return entry if entry.complete else None

    @staticmethod
    def data_path_at(root: str | Path, task_id: str) -> Path:
        """Path of a task's data file in the store at ``root`` (see :meth:`read_entry`)."""
        return Path(root) / "tasks" / validate_task_id(task_id) / "data"

    @staticmethod
    def read_range_at(
        root: str | Path,
        task_id: str,
        start: int,
        end: int,
        expected: str | None,
        into: np.ndarray,
    ) -> np.ndarray:
        """Bytes ``start..end`` of a task's data file in the store at ``root`` (another peer's
        store on this host, or the node's store read by its mirror) read into ``into``
        (``end - start`` bytes), checked against the piece digest ``expected`` if given.

        :class:`PieceCorrupt` when they do not match (that store is evicting or rewriting the
        task, or its file changed), :class:`StorageError` on a short read, OSError when the
        file is gone.
        """
        buf = into[: end - start]
        fd = os.open(PieceStore.data_path_at(root, task_id), os.O_RDONLY)
        try:
            got = os.preadv(fd, [buf], start)
        finally:
            os.close(fd)
        if got != end - start:
            raise StorageError(f"short read of bytes {start}-{end} of task {task_id} at {root}")
        if expected is not None and piece_digest(buf) != expected:
            raise PieceCorrupt(f"bytes {start}-{end} of task {task_id} at {root} do not match")
        return buf

    def identity(self) -> tuple[int, int]:
        """``(device, inode)`` of the store's root: a process that finds the same pair at
        :attr:`root` sees this very store (the same host and the same mount)."""
        st = os.stat(self.root)
        return st.st_dev, st.st_ino

    def begin(self, task_id: str, cut: Cut, source: str = "") -> TaskEntry:
        """Make room for a task cut as ``cut`` and open its data file; an existing entry is
        returned as is."""
        with self._lock:
            if task_id in self._entries:
                entry = self._entries[task_id]
                entry.last_used = self._clock()
                return entry
            length = cut.length
            self._make_room(length)
            d = self._dir(task_id)
            shutil.rmtree(d, ignore_errors=True)
            try:
                d.mkdir(parents=True)
                self._create(d / "data", length)
            except OSError as exc:
                shutil.rmtree(d, ignore_errors=True)
                if no_room(exc):
                    raise CacheFull(self._no_room(task_id, length)) from exc
                raise StorageError(f"cannot create cache file in {d}: {exc}") from exc
            entry = TaskEntry(
                task_id,
                length,
                cut.piece_size,
                last_used=self._clock(),
                source=source,
                tail_split=cut.tail_split,
            )
            self._entries[task_id] = entry
            self._reserved += length
            return entry

    def _create(self, path: Path, length: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if not reserve(fd, length):
                self.unreserved_files += 1
        finally:
            os.close(fd)

    def _no_room(self, task_id: str, length: int) -> str:
        return (
            f"no room for task {task_id} on the disk of the cache at {self.root}: it needs "
            f"{length} bytes, {self.disk().free} are free after evicting what the cache "
            "could; free space there, lower RAYFLY_CACHE_QUOTA below the disk's free space, or "
            "point RAYFLY_CACHE_DIR at a larger disk"
        )

    @property
    def quota(self) -> int:
        """The cache's byte quota."""
        return self.policy.quota

    def _make_room(self, length: int) -> None:
        if length > self.quota:
            raise CacheFull(
                f"a {length}-byte task exceeds the cache quota of {self.quota} bytes; "
                "raise RAYFLY_CACHE_QUOTA"
            )
        plan = self._room_plan(length)
        self._apply(plan)
        self._evicted += plan.evictions
        if self._used() + length > self.quota:
            raise CacheFull(
                f"cache at {self.root} is full with tasks in progress; "
                "raise RAYFLY_CACHE_QUOTA or wait"
            )

    def _room_plan(self, need: int) -> GcPlan:
        """What to evict for ``need`` more bytes. Each complete entry's file is looked at only
        when something may have to go: a cache of thousands of entries within its limits
        would otherwise pay a ``stat`` per entry at every task's begin."""
        now, used, disk = self._clock(), self._used(), self.disk()
        oldest = self._oldest_use(now)
        if not may_evict(self.policy, oldest, now, used, disk, need):
            return GcPlan([])
        return plan_gc(self._candidates(), self.policy, now, used, disk, need)

    def _used(self) -> int:
        return self._reserved

    def _bound_oldest(self, entry: TaskEntry) -> None:
        if entry.complete:
            bound = self._oldest_bound
            self._oldest_bound = entry.last_used if bound is None else min(bound, entry.last_used)

    def _oldest_use(self, now: float) -> float | None:
        """The least recent use of a complete entry, or a bound below it while that bound is
        within the TTL (then no entry is past it either): the entries are looked at only when
        the bound says one may be, and the bound becomes their true oldest use."""
        ttl = self.policy.ttl_s
        if self._oldest_bound is not None and ttl is not None and now - self._oldest_bound > ttl:
            complete = (e.last_used for e in self._entries.values() if e.complete)
            self._oldest_bound = min(complete, default=None)
        return self._oldest_bound

    def _candidates(self) -> list[Candidate]:
        """Complete entries, with the disk bytes removing each one would free (none when its
        data file has other links: published destinations share the inode)."""
        out = []
        for e in self._entries.values():
            if not e.complete:
                continue
            try:
                st = os.stat(self.data_path(e.task_id))
                frees = st.st_blocks * 512 if st.st_nlink == 1 else 0
            except OSError:
                frees = 0
            out.append(Candidate(e.task_id, e.length, e.last_used, frees))
        return out

    def disk(self) -> Disk:
        """The cache filesystem's use as ``df`` shows it: used blocks of those usable (blocks
        reserved for root count as neither)."""
        st = os.statvfs(self.root)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return Disk(used + st.f_bavail * st.f_frsize, used)

    def _plan(self, policy: GcPolicy) -> GcPlan:
        return plan_gc(self._candidates(), policy, self._clock(), self._used(), self.disk())

    def _apply(self, plan: GcPlan) -> None:
        for e in plan.evictions:
            self._remove(e.task_id)

    def take_evictions(self) -> list[Eviction]:
        """Evictions the store made on its own since the last call (to report them)."""
        with self._lock:
            out, self._evicted = self._evicted, []
        return out

    def _remove(self, task_id: str) -> None:
        self._retire(task_id)
        if (gone := self._entries.pop(task_id, None)) is not None:
            self._reserved -= gone.length
        shutil.rmtree(self._dir(task_id), ignore_errors=True)

    def discard(self, task_id: str) -> None:
        """Forget a task and delete its files (complete or not)."""
        with self._lock:
            self._remove(task_id)

    @contextlib.contextmanager
    def _open(self, task_id: str, entry: TaskEntry) -> Iterator[_OpenFile]:
        """The data file descriptor of ``entry``, kept open while the caller uses it: another
        thread may complete or remove the task meanwhile (the fd is closed after its last user).
        If the entry was replaced (removed, and the task begun anew), PieceUnavailable: the
        new file does not hold what the caller checked the old entry for."""
        with self._lock:
            if self._entries.get(task_id) is not entry:
                raise PieceUnavailable(f"task {task_id} is no longer in the cache at {self.root}")
            f = self._fds.get(task_id)
            if f is None:
                path = self._dir(task_id) / "data"
                mode = os.O_RDONLY if entry.complete else os.O_RDWR
                f = self._fds[task_id] = _OpenFile(os.open(path, mode))
                if self.direct_io and not entry.complete:
                    f.direct = self._open_direct(path)
            f.users += 1
        try:
            yield f
        finally:
            with self._lock:
                f.users -= 1
                if f.retired and not f.users:
                    f.close()

    def _open_direct(self, path: Path) -> int | None:
        """``path`` opened for ``O_DIRECT`` reads and writes; None (and no more tries) where
        the filesystem refuses them."""
        try:
            return os.open(path, os.O_RDWR | getattr(os, "O_DIRECT", 0))
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct_io = False
            return None

    def _pwrite(self, f: _OpenFile, view: memoryview, start: int) -> int:
        """Write ``view`` at ``start``: past the page cache when offset and length are aligned
        for it, through an aligned copy when only the buffer is not (a piece in Ray's object
        store starts 64 bytes into a page: a copy costs less than a page-cache write)."""
        if self.direct_io and f.direct is not None and aligned(view, start, memory=False):
            bounce = None if aligned(view, start) else BUFFERS.take(len(view))
            try:
                if bounce is not None:
                    np.copyto(bounce, np.frombuffer(view, np.uint8))
                written = os.pwrite(f.direct, view if bounce is None else bounce, start)
                with self._lock:  # writers of several pieces run at once
                    self.direct_writes += 1
                return written
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct_io = False  # refused after all: through the page cache from now on
            finally:
                if bounce is not None:
                    BUFFERS.give(bounce)
        return os.pwrite(f.fd, view, start)

    def _retire(self, task_id: str) -> None:
        """Stop handing out the task's fd; close it now or after its last user (lock held)."""
        f = self._fds.pop(task_id, None)
        if f is not None:
            f.retired = True
            if not f.users:
                f.close()

    # --- pieces ----------------------------------------------------------------------------
    def entry(self, task_id: str) -> TaskEntry | None:
        """The entry of ``task_id``, or None."""
        return self._entries.get(task_id)

    def has(self, task_id: str) -> bool:
        """True when ``task_id`` is complete and verified here."""
        entry = self._entries.get(task_id)
        return entry is not None and entry.complete

    def write_piece(
        self,
        task_id: str,
        index: int,
        data: Any,
        expected: str | None = None,
        digest: str | None = None,
    ) -> str:
        """Verify ``data`` against ``expected`` (if given), write it, and return its digest.

        ``digest``: the digest of ``data`` when the caller computed it already (it read the
        bytes and checked them), so that they are not hashed twice."""
        entry = self._require(task_id)
        start, end = entry.cut.bounds(index)
        view = memoryview(data).cast("B")
        if len(view) != end - start:
            raise PieceCorrupt(
                f"piece {index} of task {task_id} has {len(view)} bytes, expected {end - start}"
            )
        if digest is None:
            digest = piece_digest(view)
        if expected is not None and digest != expected:
            raise PieceCorrupt(f"piece {index} of task {task_id}: digest {digest} != {expected}")
        if index in entry.have:
            return digest
        try:
            with self._open(task_id, entry) as f:
                written = self._pwrite(f, view, start)
        except OSError as exc:
            if not no_room(exc):
                raise
            written = -1
        if written != len(view):
            raise StorageError(
                f"cannot write piece {index} of task {task_id} to the cache at {self.root}: "
                f"its disk is full ({self.disk().free} bytes free); free space there or "
                "point RAYFLY_CACHE_DIR at a larger disk"
            )
        with self._lock:
            entry.digests[index] = digest
            entry.have.add(index)
        return digest

    def read_piece(
        self, task_id: str, index: int, into: np.ndarray | None = None, verify: bool = False
    ) -> np.ndarray:
        """Return the bytes of a verified piece as a uint8 array.

        With ``into`` (a buffer at least a piece long, reused by the caller) no memory is
        allocated and a view of ``into`` is returned; while the task downloads, an aligned
        ``into`` is read past the page cache like the writes (the read-back for the task's hash
        does not fill the page cache with what the writes kept out of it). With ``verify`` the
        bytes are checked against the digest recorded when the piece was written
        (:class:`PieceCorrupt` if the file changed since: a disk error, or someone writing into
        the cache).
        """
        entry = self._require(task_id)
        if index not in entry.have:
            raise PieceUnavailable(f"piece {index} of task {task_id} is not held here")
        start, end = entry.cut.bounds(index)
        buf = np.empty(end - start, dtype=np.uint8) if into is None else into[: end - start]
        with self._open(task_id, entry) as f:
            direct = self.direct_io and f.direct is not None and aligned(memoryview(buf), start)
            got = os.preadv(f.direct if direct else f.fd, [buf], start)  # type: ignore[arg-type]
        if got != end - start:
            raise StorageError(f"short read of piece {index} of task {task_id}")
        if verify and piece_digest(buf) != entry.digests.get(index):
            raise PieceCorrupt(f"piece {index} of task {task_id} changed on disk at {self.root}")
        with self._lock:
            entry.last_used = self._clock()
        return buf

    def piece_length(self, task_id: str, index: int) -> int:
        """The length of piece ``index``, which this store holds (else PieceUnavailable)."""
        entry = self._require(task_id)
        if index not in entry.have:
            raise PieceUnavailable(f"piece {index} of task {task_id} is not held here")
        start, end = entry.cut.bounds(index)
        return end - start

    def _require(self, task_id: str) -> TaskEntry:
        entry = self._entries.get(task_id)
        if entry is None:
            raise PieceUnavailable(f"task {task_id} is not in the cache at {self.root}")
        return entry

    # --- completion and publishing ---------------------------------------------------------
    def complete(self, task_id: str, sha256: str) -> TaskEntry:
        """Record the task as whole and verified: the data file becomes read-only."""
        entry = self._require(task_id)
        if len(entry.have) != entry.n_pieces:
            raise StorageError(f"task {task_id} has {len(entry.have)} of {entry.n_pieces} pieces")
        with self._lock:
            self._retire(task_id)
            os.chmod(self._dir(task_id) / "data", 0o444)
            entry.sha256, entry.complete = sha256, True
            self._write_meta(entry)
            self._bound_oldest(entry)
        return entry

    def _write_meta(self, entry: TaskEntry) -> None:
        """Record a complete entry in its ``meta.json`` (replaced atomically)."""
        d = self._dir(entry.task_id)
        meta = {k: v for k, v in asdict(entry).items() if k not in {"have", "last_used"}}
        meta["n_pieces"] = entry.n_pieces
        tmp = d / f".meta.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, d / "meta.json")

    def recut(self, task_id: str, cut: Cut) -> TaskEntry:
        """Cut a complete task as ``cut`` (of its length): the same object registered again with
        other pieces (the cluster restarted, or its scheduler dropped the task) is served from
        this copy without fetching it again.

        The data file is read once: its sha256 must still be the one recorded (else
        :class:`PieceCorrupt`, and nothing changes), and each new piece's digest is taken from
        the same bytes. The entry and its ``meta.json`` then record the new cut."""
        entry = self._require(task_id)
        if not entry.complete or entry.sha256 is None or cut.length != entry.length:
            raise StorageError(f"task {task_id} is not complete at that length: not re-cut")
        n = cut.n_pieces
        whole, digests = hashlib.sha256(), {}
        buf = np.empty(max(1, min(cut.piece_size, entry.length)), dtype=np.uint8)
        with open(self._dir(task_id) / "data", "rb", buffering=0) as fh:
            for i in range(n):
                start, end = cut.bounds(i)
                view = buf[: end - start]
                if os.preadv(fh.fileno(), [view], start) != end - start:
                    raise StorageError(f"short read of task {task_id} at {self.root}")
                whole.update(view)
                digests[i] = piece_digest(view)
        if whole.hexdigest() != entry.sha256:
            raise PieceCorrupt(f"task {task_id} changed on disk at {self.root}")
        with self._lock:
            entry.piece_size, entry.tail_split = cut.piece_size, cut.tail_split
            entry.digests, entry.have = digests, set(range(n))
            self._write_meta(entry)
        return entry

    def data_path(self, task_id: str) -> Path:
        """Path of a task's data file."""
        return self.data_path_at(self.root, task_id)

    def publish(self, task_id: str, dest: str | Path) -> str:
        """Make a complete task appear at ``dest`` atomically; returns ``"link"`` or ``"copy"``."""
        entry = self._require(task_id)
        if not entry.complete:
            raise StorageError(f"task {task_id} is not complete; refusing to publish it")
        dest = Path(dest)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create directory {dest.parent}: {exc.strerror}") from exc
        tmp = dest.parent / f".{dest.name}.rayfly-{uuid.uuid4().hex[:8]}.tmp"
        how = "link"
        try:
            try:
                os.link(self.data_path(task_id), tmp)
            except OSError:
                how = "copy"
                shutil.copyfile(self.data_path(task_id), tmp)
            os.replace(tmp, dest)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        entry.last_used = self._clock()
        return how

    # --- inspection ------------------------------------------------------------------------
    def entries(self) -> list[TaskEntry]:
        """All entries, most recently used first."""
        return sorted(self._entries.values(), key=lambda e: -e.last_used)

    def used_bytes(self) -> int:
        """Bytes the store has reserved (complete and in-progress tasks)."""
        with self._lock:
            return self._used()

    def gc(self, keep_bytes: int | None = None, dry_run: bool = False) -> GcPlan:
        """Evict what the policy says must go (TTL, quota, watermarks); with ``keep_bytes``, also
        least-recently-used complete tasks until at most that many bytes are kept. With
        ``dry_run`` nothing is removed: the plan says what would be, and why."""
        policy = self.policy
        if keep_bytes is not None:
            policy = GcPolicy(keep_bytes, policy.ttl_s, policy.high, policy.low)
        with self._lock:
            plan = self._plan(policy)
            if not dry_run:
                self._apply(plan)
        return plan

    def close(self) -> None:
        """Close open files."""
        with self._lock:
            for task_id in list(self._fds):
                self._retire(task_id)

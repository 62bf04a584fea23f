"""The Python API shared by the CLI, jobs and notebooks: ``rayfly.distribute(...)``."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import fsspec
import ray
from ray.exceptions import RayTaskError

from rayfly import dest as dest_paths
from rayfly import pack, source
from rayfly.actors import placement
from rayfly.actors.retry import call_sync, unwrap
from rayfly.cluster import connect
from rayfly.config import PackConfig, PeerConfig, SchedulerConfig, from_env, parse_rate
from rayfly.errors import InvalidInput, RayflyError
from rayfly.fanout import ProgressFn, fetch_everywhere
from rayfly.filters import FileFilter
from rayfly.protocol import (
    FetchItem,
    FetchRequest,
    NodeResult,
    flag_disagreements,
    single_file,
)
from rayfly.report import Report
from rayfly.task import PieceLimits, SourceSpec, TaskInfo, info_for
from rayfly.version import Version, identity

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
LOCAL_PROTOCOLS = (None, "file", "local")
ANY_NODE = "any"


def _validate(
    source_url: str,
    dest: str,
    sha256: str | None,
    piece_size: int | None,
    concurrency: int | None,
    storage_options: dict[str, Any] | None,
) -> dict[str, Any]:
    """The storage options (a copy), once every argument is checked."""
    options = dict(storage_options or {})
    if not source_url:
        raise InvalidInput("no source given: pass a URL or path, e.g. s3://bucket/prefix/")
    dest_paths.validate_template(dest)
    if sha256 is not None and not _SHA256.match(sha256):
        raise InvalidInput(f"--sha256 {sha256!r} is not 64 hexadecimal digits")
    if piece_size is not None and piece_size <= 0:
        raise InvalidInput(f"--piece-size must be positive, got {piece_size}")
    if concurrency is not None and concurrency <= 0:
        raise InvalidInput(f"--concurrency must be positive, got {concurrency}")
    source.check_storage_options(source_url, options)
    return options


@dataclass(frozen=True)
class Origin:
    """Where a source is read: its URL, and the node it is on (None: any node may read it)."""

    url: str
    node: placement.NodeInfo | None = None


def is_local(url: str) -> bool:
    """True for a path or ``file://`` URL: a file on some node's own filesystem."""
    return fsspec.core.split_protocol(url)[0] in LOCAL_PROTOCOLS


def _local_url(url: str, here: bool) -> str:
    """The canonical ``file://`` URL of a local path; a relative path (or ``~``) is resolved
    here, so it is refused when the file is on another node."""
    raw = fsspec.core.split_protocol(url)[1]
    if not here and not os.path.isabs(raw):
        raise InvalidInput(
            f"{url}: a path on another node must be absolute (this process's working "
            "directory means nothing there)"
        )
    return "file://" + os.path.normpath(os.path.abspath(os.path.expanduser(raw)))


def locate(
    url: str, source_node: str | None, nodes: list[placement.NodeInfo], here: str | None
) -> Origin:
    """Which node reads the source ``url``, given ``--source-node`` (None: this node; ``any``:
    every node sees the same file) and ``here``, the node this process runs on (None for a
    Ray Client outside the cluster). Only local paths are tied to a node."""
    if not is_local(url):
        if source_node not in (None, ANY_NODE):
            raise InvalidInput(
                f"--source-node names the node of a local path; {source.redact_url(url)} "
                "is read from its origin by any node"
            )
        return Origin(url)
    if source_node == ANY_NODE:
        return Origin(_local_url(url, here is not None))
    if source_node is not None:
        node = placement.match_node(source_node, nodes)
    elif here is None:
        raise InvalidInput(
            f"{url} is a local path, but this client is outside the cluster (Ray Client): "
            "name the node it is on with --source-node NODE (id prefix, IP or hostname), or "
            "--source-node any if every node sees it (a shared filesystem)"
        )
    else:
        node = placement.match_node(here, nodes, "this process's node")
    return Origin(_local_url(url, node.node_id == here), node)


def this_node() -> str | None:
    """The node this process runs on; None for a Ray Client (``ray://``) outside the cluster."""
    if ray.util.client.ray.is_connected():
        return None
    return ray.get_runtime_context().get_node_id()


def _list(origin: Origin, options: dict[str, Any], scheduler: Any) -> list[source.SourceFile]:
    """List the source where it is: on its own node's peer for a node-local path."""
    if origin.node is None:
        return ray.get(scheduler.resolve.remote(origin.url, options))
    peer = placement.get_or_create_peer(origin.node, from_env(PeerConfig))
    return ray.get(peer.list_source.remote(origin.url, options))


def plan(
    source_url: str,
    options: dict[str, Any],
    tag: str,
    sha256: str | None,
    piece_size: int | None,
    scheduler: Any,
    source_node: str | None = None,
    files_filter: FileFilter | None = None,
) -> list[FetchItem]:
    """Resolve the source into tasks registered with the scheduler in one call: one per file,
    the small files of a prefix in shared packs (:mod:`rayfly.pack`).

    A local path is listed by the peer of its node (see :func:`locate`), and its tasks are
    read from the origin there only. ``files_filter`` keeps the files of a prefix it takes.
    Each file's version comes with the listing and is part of its task id: a changed object is
    a new task. A file whose origin gives no validator is a new task on every call, unless the
    content is pinned by ``sha256`` or ``tag``.
    """
    origin = locate(source_url, source_node, placement.alive_nodes(), this_node())
    files = call_sync(lambda: _list(origin, options, scheduler), "listing the source")
    if files_filter is not None:
        files = files_filter.apply(files, source.redact_url(source_url))
    single = len(files) == 1 and files[0].url.rstrip("/") == origin.url.rstrip("/")
    if sha256 and not single:
        raise InvalidInput(
            f"--sha256 applies to one file, but {source_url} holds {len(files)} files"
        )
    node_id = origin.node.node_id if origin.node else None
    base = SourceSpec(origin.url, options, tag, source_node=node_id)
    versions = [identity(f.version, tag, sha256) for f in files]
    limits = None if piece_size else call_sync(lambda: ray.get(scheduler.piece_limits.remote()))
    items = _items(files, versions, base, sha256, piece_size, single, limits)
    tasks: list[TaskInfo] = call_sync(
        lambda: ray.get(scheduler.register_tasks.remote([i.task for i in items])),
        "registering the tasks",
    )
    return [dataclasses.replace(i, task=t) for i, t in zip(items, tasks, strict=True)]


def _items(
    files: list[source.SourceFile],
    versions: list[Version],
    base: SourceSpec,
    sha256: str | None,
    piece_size: int | None,
    single: bool,
    limits: PieceLimits | None = None,
) -> list[FetchItem]:
    """The items of a listing: a task per file, but the small files of a prefix in packs
    (:mod:`rayfly.pack`, sized by :class:`~rayfly.config.PackConfig`); ``limits``: what the
    scheduler measured of the links bounds the default piece size of a file's task."""
    packing = from_env(PackConfig)
    piece = pack.piece_size_of(packing.pack_size, piece_size)
    threshold = 0 if single else packing.pack_threshold
    groups = pack.plan([f.size for f in files], threshold, packing.pack_size, piece)
    items = [
        FetchItem(
            _task(files[i], base, versions[i], sha256, piece_size, limits),
            None if single else files[i].relpath,
        )
        for i in groups.singles
    ]
    for g in groups.packs:
        piece = pack.piece_size_for([files[i].size for i in g], piece_size)
        task = pack.pack_task([files[i] for i in g], [versions[i] for i in g], base, piece)
        items.append(FetchItem(task, None, tuple(files[i].relpath for i in g)))
    return items


def _task(
    f: source.SourceFile,
    base: SourceSpec,
    version: Version,
    sha256: str | None,
    piece_size: int | None,
    limits: PieceLimits | None = None,
) -> TaskInfo:
    """The task of one listed file (its version folded into the task id)."""
    spec = dataclasses.replace(base, url=f.url, expected_sha256=sha256, version=version)
    return info_for(spec, f.size, f.ranges, piece_size, limits)


def _check_name(items: list[FetchItem], dest: str) -> None:
    """A single file put into a directory (``--dest DIR/``) needs a safe name from its URL."""
    if len(items) == 1 and items[0].relpath is None and dest.endswith("/"):
        dest_paths.url_name(items[0].task.url)


def distribute(
    source_url: str,
    dest: str,
    *,
    nodes: str | int | list[str] | None = "all",
    exclude_head: bool = False,
    piece_size: int | None = None,
    concurrency: int | None = None,
    limit_rate: str | float | None = None,
    sha256: str | None = None,
    storage_options: dict[str, Any] | None = None,
    tag: str = "",
    address: str | None = None,
    local_nodes: int = 1,
    progress: ProgressFn | None = None,
    timeout: float | None = None,
    source_node: str | None = None,
    include: tuple[str, ...] | list[str] = (),
    exclude: tuple[str, ...] | list[str] = (),
    max_files: int | None = None,
) -> Report:
    """Put the file or prefix at ``source_url`` on every chosen node, at ``dest``.

    Each byte is read from the origin once; pieces travel between nodes. Returns a
    :class:`Report`; raises :class:`RayflyError` for bad input or a source that cannot be read
    at all (then nothing is written anywhere). Per-node failures are in the report, not raised.

    - ``dest`` may contain ``{node_id}``, ``{node_ip}`` and ``{hostname}``.
    - ``nodes``: a selector or a list of selectors that intersect (:mod:`rayfly.nodes`:
      ``"all"``, ``4``, ``"50%"``, ``"label:zone=a"``, ``"resource:GPU"``, node ids); with
      ``exclude_head``, never the head node.
    - A local path (or ``file://`` URL) is the file on this process's node, read there only;
      ``source_node`` names another node (id prefix, IP or hostname), or ``"any"`` for a
      filesystem every node shares.
    - ``include``/``exclude`` (globs on the path relative to the prefix) and ``max_files``
      choose the files of a prefix (:mod:`rayfly.filters`).
    - ``limit_rate`` (bytes/s, or ``"100MiB"``) caps each node's download rate for this call;
      a node's own ``RAYFLY_DOWNLOAD_RATE`` applies as well (the lower one wins).
    """
    rate = parse_rate(limit_rate)
    options = _validate(source_url, dest, sha256, piece_size, concurrency, storage_options)
    files_filter = FileFilter(tuple(include), tuple(exclude), max_files).check()
    targets, scheduler, peer_config = _cluster(address, local_nodes, nodes, exclude_head)
    t0 = time.time()
    items = _planned(
        source_url, dest, options, tag, sha256, piece_size, scheduler, source_node, files_filter
    )
    request = FetchRequest(items, dest, concurrency or peer_config.concurrency, limit_rate=rate)
    results = fetch_everywhere(request, targets, scheduler, peer_config, progress, timeout)
    return _report(source_url, dest, items, results, t0)


def _cluster(
    address: str | None, local_nodes: int, nodes: str | int | list[str] | None, exclude_head: bool
) -> tuple[list[placement.NodeInfo], Any, PeerConfig]:
    """Connect; the chosen nodes, the scheduler (created if missing), the peers' config."""
    connect(address, local_nodes)
    targets = placement.select_nodes(nodes, placement.alive_nodes(), exclude_head)
    return targets, placement.get_scheduler(from_env(SchedulerConfig)), from_env(PeerConfig)


def _planned(
    source_url: str,
    dest: str,
    options: dict[str, Any],
    tag: str,
    sha256: str | None,
    piece_size: int | None,
    scheduler: Any,
    source_node: str | None,
    files_filter: FileFilter,
) -> list[FetchItem]:
    """:func:`plan`, with a Ray task error unwrapped and the destination's name checked."""
    try:
        items = plan(
            source_url, options, tag, sha256, piece_size, scheduler, source_node, files_filter
        )
        _check_name(items, dest)
    except RayTaskError as exc:
        raise unwrap(exc) from None
    return items


def _report(
    source_url: str, dest: str, items: list[FetchItem], results: list[NodeResult], t0: float
) -> Report:
    flag_disagreements(results, single_file(items))
    return Report(
        source.redact_url(source_url),
        dest,
        results,
        sum(pack.content_length(i.task) for i in items),
        time.time() - t0,
        [i.task.task_id for i in items],
        unvalidated_warnings(items),
        t0,
    )


def unvalidated_warnings(items: list[FetchItem]) -> list[str]:
    """What to tell the user about files whose origin gives no validator."""
    files = [(m.url, m.version) for i in items for m in i.task.members] + [
        (i.task.url, i.task.version) for i in items if not i.task.members
    ]
    bare = [url for url, version in files if not version.validated]
    if not bare:
        return []
    names = ", ".join(source.redact_url(url) for url in bare[:3])
    more = f" (+{len(bare) - 3} more)" if len(bare) > 3 else ""
    return [
        f"the origin gives no validator (ETag, Last-Modified, version) for {names}{more}: "
        "a cached copy is reused only when --sha256 or --tag pins the content, so without "
        "them every call fetches it from the origin again"
    ]


__all__ = ["RayflyError", "Report", "distribute"]

"""Preheat: put an image's config and layers into chosen nodes' caches before any pull.

``preheat("registry/name:tag")`` resolves the manifest (an index too: the chosen platform, or
every platform), registers every blob with the scheduler as a P2P task whose id is its digest,
and has each chosen node's peer fetch them into its cache (no destination file). The result is
the same :class:`~rayfly.report.Report` as a file distribution. A later pull through any of
those nodes' mirrors is served from the node's cache: no blob request reaches the upstream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import ray
from ray.exceptions import RayTaskError

from rayfly.actors import placement
from rayfly.actors.retry import unwrap
from rayfly.cluster import connect
from rayfly.config import PeerConfig, SchedulerConfig, from_env
from rayfly.errors import InvalidInput
from rayfly.fanout import fetch_everywhere
from rayfly.protocol import FetchItem, FetchRequest, NodeResult
from rayfly.proxy.oci import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    ImageRef,
    parse_image_ref,
    parse_manifest,
    parse_platform,
)
from rayfly.proxy.p2p import BLOB_PIECE_FLOOR, blob_spec
from rayfly.proxy.upstream import (
    Credentials,
    RegistryClient,
    Upstream,
    default_upstreams,
    load_docker_config,
)
from rayfly.report import Report
from rayfly.task import TaskInfo

T = TypeVar("T")


@dataclass(frozen=True)
class BlobPlan:
    """A blob to preheat: its descriptor and the P2P source (URL and auth headers)."""

    descriptor: Descriptor
    url: str
    headers: dict[str, str]


def upstream_for(ref: ImageRef, upstreams: dict[str, Upstream] | None, insecure: bool) -> Upstream:
    """The configured upstream of the image's registry, else ``https://<registry>``."""
    known = {**default_upstreams(), **(upstreams or {})}
    if ref.registry in known:
        return known[ref.registry]
    scheme = "http" if insecure else "https"
    return Upstream(ref.registry, f"{scheme}://{ref.registry}", insecure)


async def resolve_image(
    client: RegistryClient, ref: ImageRef, platform: str | None
) -> list[BlobPlan]:
    """Every blob of the image (config first, then layers; for an index, per platform)."""
    top = await client.get_manifest(ref.name, ref.reference)
    parsed = parse_manifest(top.body, top.media_type)
    manifests: list[ImageManifest] = []
    if isinstance(parsed, ImageIndex):
        wanted = None if platform in (None, "all") else parse_platform(platform)
        for desc in parsed.select(wanted):
            child = await client.get_manifest(ref.name, str(desc.digest))
            sub = parse_manifest(child.body, child.media_type)
            if isinstance(sub, ImageManifest):
                manifests.append(sub)
    else:
        manifests.append(parsed)
    plans: dict[str, BlobPlan] = {}
    for manifest in manifests:
        for desc in manifest.blobs:
            if str(desc.digest) not in plans:
                head = await client.head_blob(ref.name, desc.digest)
                if head.length != desc.size:
                    raise InvalidInput(
                        f"{desc.digest}: manifest says {desc.size} bytes, "
                        f"the registry {head.length}"
                    )
                url = client.blob_url(ref.name, desc.digest)
                plans[str(desc.digest)] = BlobPlan(desc, url, head.auth_headers)
    return list(plans.values())


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion, also from inside a running event loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _resolve(
    upstream: Upstream, creds: Credentials | None, ref: ImageRef, platform: str | None
) -> list[BlobPlan]:
    async with aiohttp.ClientSession() as session:
        return await resolve_image(RegistryClient(upstream, session, creds), ref, platform)


def preheat(
    image: str,
    *,
    platform: str | None = None,
    nodes: str | int | list[str] | None = "all",
    exclude_head: bool = False,
    upstreams: dict[str, Upstream] | None = None,
    insecure: bool = False,
    docker_config: str | None = None,
    address: str | None = None,
    timeout: float | None = None,
) -> Report:
    """Put every blob of ``image`` into the cache of every chosen node; returns the report.

    ``platform`` (``os/arch[/variant]``) picks one manifest of an index; None or ``"all"``
    takes every platform. ``insecure`` allows plain http to a registry not in ``upstreams``.
    """
    ref = parse_image_ref(image)
    upstream = upstream_for(ref, upstreams, insecure)
    creds = load_docker_config(docker_config).get(ref.registry) if docker_config else None
    plans = _run(_resolve(upstream, creds, ref, platform))
    connect(address)
    targets = placement.select_nodes(nodes, placement.alive_nodes(), exclude_head)
    t0 = time.time()
    tasks, results = _fetch_everywhere(plans, targets, timeout)
    total = sum(t.length for t in tasks)
    ids = [t.task_id for t in tasks]
    return Report(str(ref), "(node cache)", results, total, time.time() - t0, ids, [], t0)


def _fetch_everywhere(
    plans: list[BlobPlan], targets: list[placement.NodeInfo], timeout: float | None
) -> tuple[list[TaskInfo], list[NodeResult]]:
    """Register every blob (task id = digest) and have each target's peer cache them all."""
    peer_config = from_env(PeerConfig)
    scheduler = placement.get_scheduler(from_env(SchedulerConfig))
    specs = [blob_spec(p.url, p.headers, p.descriptor.digest) for p in plans]
    try:
        registered = [scheduler.register.remote(s, piece_floor=BLOB_PIECE_FLOOR) for s in specs]
        tasks: list[TaskInfo] = ray.get(registered)
    except RayTaskError as exc:
        raise unwrap(exc) from None
    items = [FetchItem(t, str(p.descriptor.digest)) for t, p in zip(tasks, plans, strict=True)]
    request = FetchRequest(items, None, peer_config.concurrency)
    return tasks, fetch_everywhere(request, targets, scheduler, peer_config, None, timeout)

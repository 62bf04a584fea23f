"""Connecting to Ray: an existing cluster, or an embedded local one started for the caller."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from rayfly.config import NAMESPACE, node_cache_dir
from rayfly.errors import ClusterError

_local: Any = None


def _env() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def connect(
    address: str | None = None, local_nodes: int = 1, object_store_memory: int = 512 << 20
) -> str:
    """Connect this process to Ray and return the cluster's address.

    Uses an already-initialised Ray as is. Otherwise ``address`` (or ``RAY_ADDRESS``) names the
    cluster; with neither, a local cluster of ``local_nodes`` simulated nodes is started on this
    machine and shut down when the process exits.
    """
    global _local
    _env()
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        elif local_nodes <= 1:
            ray.init(
                address="local",
                namespace=NAMESPACE,
                object_store_memory=object_store_memory,
                include_dashboard=False,
                log_to_driver=False,
            )
        else:
            _local = start_local_cluster(local_nodes, object_store_memory)
            ray.init(address=_local.address, namespace=NAMESPACE, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray"
        raise ClusterError(
            f"cannot connect to Ray at {where}: {exc}. Check the address "
            "(ray://, host:port of the GCS, or 'auto') and that the cluster is "
            "up"
        ) from None
    return ray.get_runtime_context().gcs_address


def _probe(address: str) -> None:
    """Fail fast when ``host:port`` does not accept TCP (ray.init would retry for minutes)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return
    except OSError as exc:
        raise ClusterError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head`, or pass --address / set RAY_ADDRESS to a running cluster"
        ) from None


def _last_started() -> str:
    """The address the last ``ray start`` on this machine wrote ('' if none or unknown)."""
    try:
        from ray._private.utils import read_ray_address

        return read_ray_address(None) or ""
    except (ImportError, AttributeError, OSError):
        return ""


def connect_existing(address: str | None = None) -> None:
    """Connect to a running cluster (``address``, else ``RAY_ADDRESS``, else ``auto``)."""
    if ray.is_initialized():
        return
    _env()
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    _probe(_last_started() if target == "auto" else target)
    try:
        ray.init(
            address=target,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(
            f"no Ray cluster found at {target}: {exc} Start one with `ray start --head`, or "
            "pass --address / set RAY_ADDRESS to a running cluster"
        ) from None


def start_local_cluster(nodes: int, object_store_memory: int = 512 << 20) -> Any:
    """A ``ray.cluster_utils.Cluster`` of ``nodes`` nodes on this machine (shut down at exit).

    Simulated nodes share the host, so each gets its own cache directory, as a host has its own:
    the head uses this process's (:func:`~rayfly.config.node_cache_dir`), node ``i`` the
    subdirectory ``local-node-<i>`` of it, set as ``RAYFLY_CACHE_DIR`` for its raylet (whose
    environment Ray's workers inherit). The same ``i`` finds the same cache next time.
    """
    from ray.cluster_utils import Cluster

    _env()
    base = node_cache_dir()
    args = {"num_cpus": 1, "object_store_memory": object_store_memory}
    with _cache_dir(base):
        cluster = Cluster(initialize_head=True, head_node_args={**args, "include_dashboard": False})
    for i in range(1, nodes):
        with _cache_dir(base / f"local-node-{i}"):
            cluster.add_node(**args)
    cluster.wait_for_nodes()

    def stop() -> None:
        ray.shutdown()
        cluster.shutdown()

    atexit.register(stop)
    return cluster


@contextlib.contextmanager
def _cache_dir(path: Path) -> Iterator[None]:
    """``RAYFLY_CACHE_DIR`` is ``path`` for the processes started inside (Ray copies
    ``os.environ`` when it spawns a node's raylet)."""
    before = os.environ.get("RAYFLY_CACHE_DIR")
    os.environ["RAYFLY_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAYFLY_CACHE_DIR", None)
        else:
            os.environ["RAYFLY_CACHE_DIR"] = before

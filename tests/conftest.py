"""Shared fixtures: one local multi-node Ray cluster per session, a counting HTTP origin, S3."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.files import sha256_of as sha256_file  # noqa: F401 (the tests' name for it)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _own_home() -> Path:
    """The suite owns every piece of state it uses: HOME (so ``~/.ray``, ``~/.cache/rayfly``,
    ``~/.docker``) is a fresh directory for this session, set before Ray is imported or started;
    Ray's token settings of the developer's shell are dropped (the jobs tests make their own)."""
    home = Path(tempfile.mkdtemp(prefix="rayfly-test-home-"))
    os.environ["HOME"] = str(home)
    os.environ["XDG_CACHE_HOME"] = str(home / ".cache")
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "DOCKER_CONFIG"):
        os.environ.pop(var, None)
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


TEST_HOME = _own_home()

CLUSTER_NODES = 4


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_file(node_id: str, task_id: str) -> Path:
    """The data file of ``task_id`` in the piece store of ``node_id`` (as its peer says)."""
    import ray

    from rayfly.actors import placement

    peer = placement.existing_peers()[node_id]
    return Path(ray.get(peer.info.remote())["cache_dir"]) / "tasks" / task_id / "data"


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that lives for the whole test session."""
    return tmp_path_factory.mktemp("rayfly")


@pytest.fixture(scope="session")
def ray_cluster(session_dir: Path) -> Iterator[object]:
    """A connected local Ray cluster of CLUSTER_NODES nodes; peers cache under session_dir."""
    import ray

    from rayfly.cluster import start_local_cluster
    from rayfly.config import NAMESPACE

    os.environ["RAYFLY_CACHE_DIR"] = str(session_dir / "cache")
    os.environ.setdefault("RAYFLY_PIECE_TIMEOUT_S", "20")
    # the test machine's own disk must not evict what tests cached (tests of the watermarks
    # set their own, on a small tmpfs)
    os.environ.setdefault("RAYFLY_CACHE_HIGH_WATERMARK", "100%")
    os.environ.setdefault("RAYFLY_CACHE_LOW_WATERMARK", "100%")
    os.environ.setdefault("RAYFLY_LEASE_TIMEOUT_S", "20")
    # the simulated nodes share this host and its disk; pieces move between them through the
    # object store, as between real hosts (tests/cluster/test_local_reads.py turns it on)
    os.environ.setdefault("RAYFLY_LOCAL_READS", "off")
    # ray.util.metrics reach the Prometheus endpoint within ~1 s instead of 10 (test_metrics)
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    # a SIGKILLed node is declared dead after 5 failed checks a second apart (default: ~17 s);
    # a node that is alive but loaded answers within the 10 s check timeout (test_node_loss)
    os.environ.setdefault("RAY_health_check_period_ms", "1000")
    os.environ.setdefault("RAY_health_check_failure_threshold", "5")
    cluster = start_local_cluster(CLUSTER_NODES, object_store_memory=400 << 20)
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def origin_root(session_dir: Path) -> Path:
    """The directory the HTTP origin serves."""
    root = session_dir / "origin"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def origin_server(origin_root: Path) -> Iterator[object]:
    """An HTTP origin on loopback that counts the bytes it serves."""
    from rayfly.demo_origin import OriginServer

    server = OriginServer(origin_root).start()
    yield server
    server.stop()


@pytest.fixture
def origin(origin_server: object) -> object:
    """The session's HTTP origin with counters zeroed for this test."""
    origin_server.reset()  # type: ignore[attr-defined]
    origin_server.rate = None  # type: ignore[attr-defined]
    origin_server.validators = True  # type: ignore[attr-defined]
    return origin_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 endpoint on loopback (moto's server mode); credentials are moto's test ones."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_options(s3_endpoint: str) -> dict[str, object]:
    """fsspec storage options for the moto endpoint."""
    return {
        "endpoint_url": s3_endpoint,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-west-2"},
    }

"""An extra Ray worker node that a test can kill like a host: ``ray start --address ... --block``
in its own process group, optionally in a private mount namespace.

SIGKILL of the group takes the raylet, its object store and every worker (and so every actor)
on it at once, as a host failure does; killing an actor does not show that.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MiB = 1 << 20


class RayNode:
    """A worker node joined to the cluster at ``address``.

    ``env`` is the node's own environment (its raylet's, which its workers inherit), e.g.
    ``RAYFLY_CACHE_DIR`` (default: a directory of its own under ``log_dir``). With
    ``private_mounts`` the node runs under ``unshare -m --propagation private``: mounts made
    afterwards outside it are invisible to it, as another host's filesystem is.
    """

    def __init__(
        self,
        address: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        private_mounts: bool = False,
        object_store_memory: int = 100 * MiB,
        num_cpus: int = 1,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.address = address
        self.tag = f"rayfly-test-node-{uuid.uuid4().hex[:8]}"
        self.node_id = ""
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(log_dir / f"{self.tag}.log", "w")  # noqa: SIM115
        cmd = [
            shutil.which("ray") or "ray",
            "start",
            f"--address={address}",
            "--block",
            f"--num-cpus={num_cpus}",
            f"--object-store-memory={object_store_memory}",
            f'--resources={{"{self.tag}": 1}}',
            "--disable-usage-stats",
        ]
        if labels:
            cmd.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
        if private_mounts:
            cmd = ["unshare", "-m", "--propagation", "private", *cmd]
        full_env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ADDRESS": "",
            "RAYFLY_CACHE_DIR": str(log_dir / f"{self.tag}-cache"),  # a host has its own cache
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=full_env
        )

    def wait_alive(self, timeout: float = 120) -> str:
        """Wait until the node is alive in the cluster; returns its Ray node id."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}; see {self.log.name}")
            for n in ray.nodes():
                if n.get("Alive") and self.tag in n.get("Resources", {}):
                    self.node_id = n["NodeID"]
                    return self.node_id
            time.sleep(0.5)
        raise TimeoutError(f"node {self.tag} did not join within {timeout}s")

    def kill(self) -> None:
        """SIGKILL the node's whole process group (raylet, object store, workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def retire(self) -> None:
        """Kill the node, wait until the cluster sees it dead, and tell the scheduler its peer
        is gone, so that later tests on the session cluster neither see nor wait for it."""
        import ray

        from rayfly.actors import placement

        self.kill()
        self.wait_dead()
        ray.get(placement.get_scheduler().peer_lost.remote(self.node_id))

    def wait_dead(self, timeout: float = 60) -> None:
        """Wait until the cluster has noticed the node is gone."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(n["NodeID"] == self.node_id and n.get("Alive") for n in ray.nodes()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"node {self.node_id} still alive {timeout}s after it was killed")


def mount_tmpfs(where: Path, pid: int | None = None, size: str = "64m") -> None:
    """Mount a tmpfs of ``size`` at ``where`` (inside ``pid``'s mount namespace if given: with
    a :class:`RayNode` started with ``private_mounts``, only that node sees it)."""
    enter = ["nsenter", "-t", str(pid), "-m"] if pid else []
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [*enter, "mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True
    )


@contextlib.contextmanager
def node_with_tmpfs_cache(
    address: str, log_dir: Path, cache: Path, size: str = "64m"
) -> Iterator[RayNode]:
    """A worker node whose cache is a tmpfs of ``size`` at ``cache`` that only it sees (its own
    mount namespace: another host's disk); retired on exit."""
    node = start_node(address, log_dir, env={"RAYFLY_CACHE_DIR": str(cache)}, private_mounts=True)
    try:
        mount_tmpfs(cache, node.proc.pid, size)  # before its peer makes its store there
        yield node
    finally:
        node.retire()


def start_node(address: str, log_dir: Path, attempts: int = 2, **kwargs: Any) -> RayNode:
    """Start a worker node and wait for it to join; see :class:`RayNode`. A node whose raylet
    did not register in time (Ray allows 30 s; a loaded 2-core machine can exceed it) is
    started once more."""
    for attempt in range(1, attempts + 1):
        node = RayNode(address, log_dir, **kwargs)
        try:
            node.wait_alive()
            return node
        except RuntimeError:
            node.kill()
            if attempt == attempts:
                raise
        except BaseException:
            node.kill()
            raise
    raise AssertionError("unreachable")

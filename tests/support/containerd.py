"""A real containerd for tests: own root, state and socket; pulls with ``ctr --hosts-dir``."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from rayfly.proxy.runtimes import write_containerd_hosts

DISABLED = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
]


def binaries_missing() -> list[str]:
    return [b for b in ("containerd", "ctr") if shutil.which(b) is None]


class Containerd:
    """``containerd`` started with a config of its own paths under ``root``."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.socket = root / "containerd.sock"
        self.hosts_dir = root / "certs.d"
        config = root / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{root / "root"}"\nstate = "{root / "state"}"\n'
            f"disabled_plugins = {DISABLED!r}\n".replace("'", '"')
            + f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{root / "ttrpc.sock"}"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
        )
        self.log = open(root / "containerd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.socket.exists() and self.ctr("version").returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"containerd did not start: see {self.root / 'containerd.log'}")

    def ctr(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def use_mirror(
        self, registry: str, mirror_url: str, upstream_url: str, fallback: bool = True
    ) -> None:
        """Point pulls of ``registry`` at ``mirror_url`` (with ``fallback``, falling back to
        ``upstream_url``; without, the mirror is the only host asked)."""
        server = upstream_url if fallback else None
        write_containerd_hosts(registry, self.hosts_dir, mirror_url, server, fallback)

    def pull(self, ref: str) -> subprocess.CompletedProcess[str]:
        """``ctr images pull`` with the hosts dir, unpacked on the native snapshotter."""
        return self.ctr(
            "images",
            "pull",
            "--hosts-dir",
            str(self.hosts_dir),
            "--snapshotter",
            "native",
            ref,
        )

    def remove_all(self) -> None:
        names = self.ctr("images", "ls", "-q").stdout.split()
        if names:
            self.ctr("images", "rm", "--sync", *names)
        self.ctr("content", "prune", "references")

    def content_digests(self) -> set[str]:
        out = self.ctr("content", "ls", "-q").stdout.split()
        return set(out)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()

"""Network namespaces, veth links, tc shaping and the processes that live in them.

Layout for prefix ``rfy`` and subnet ``10.213.0``::

    rfy-sw      the switch: bridge br0 with one port per host (h0..h{N-1}) and one for the origin
    rfy-h{i}    emulated host i: eth0 = 10.213.0.{10+i}; Ray head in h0, a raylet in each other
    rfy-origin  the origin: eth0 = 10.213.0.2; HTTP file server (and moto's S3 server)

Each host link is shaped in both directions with ``tbf``: egress of the host's eth0 (its upload)
and egress of its switch port (its download).  The root namespace gets no address and no route
into the subnet, so no traffic ever leaves these namespaces.

State machine of :class:`Testbed`: ``new -> up -> down``.  ``up`` may fail half-way; ``down`` is
idempotent and removes whatever was made, so it is safe to call from a signal handler, ``finally``
or ``atexit``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 120.0
RAY_START_PARALLEL = 2


@dataclass(frozen=True)
class TestbedConfig:
    """Shape of one testbed; every name and address is derived from ``prefix`` and ``subnet``."""

    hosts: int = 3
    prefix: str = "rfy"
    subnet: str = "10.213.0"
    rate_mbit: float = 200.0
    origin_rate_mbit: float | None = None
    latency_ms: float = 25.0
    mtu: int = 1500
    tcp_cc: str | None = None
    nice: int = 0
    workdir: Path | None = None
    ray: bool = True
    ray_port: int = 6379
    ray_num_cpus: int = 2
    object_store_bytes: int = 1 << 30
    http_port: int = 8080
    s3: bool = False
    s3_port: int = 5000
    extra_env: dict[str, str] = field(default_factory=dict)
    host_env: dict[int, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Reject shapes that would not fit the /24 or the 15-character interface names."""
        if not 1 <= self.hosts <= 200:
            raise ValueError(f"hosts must be in 1..200, got {self.hosts}")
        if len(self.prefix) > 8 or not self.prefix.isalnum():
            raise ValueError(f"prefix must be 1..8 alphanumerics, got {self.prefix!r}")
        parts = self.subnet.split(".")
        if len(parts) != 3 or not all(p.isdigit() and int(p) < 256 for p in parts):
            raise ValueError(f"subnet must look like 10.213.0, got {self.subnet!r}")
        if not self.subnet.startswith(("10.", "192.168.")):
            raise ValueError("subnet must be private (10.x or 192.168.x)")

    @property
    def root(self) -> Path:
        """Working directory for logs, Ray temp dirs, origin files and destinations."""
        return self.workdir or Path(f"/tmp/{self.prefix}-tb")

    @property
    def switch_ns(self) -> str:
        """Name of the switch namespace."""
        return f"{self.prefix}-sw"

    @property
    def origin_ns(self) -> str:
        """Name of the origin namespace."""
        return f"{self.prefix}-origin"

    @property
    def origin_ip(self) -> str:
        """Address of the origin."""
        return f"{self.subnet}.2"

    def host_ns(self, i: int) -> str:
        """Name of host ``i``'s namespace."""
        return f"{self.prefix}-h{i}"

    def host_ip(self, i: int) -> str:
        """Address of host ``i``."""
        return f"{self.subnet}.{10 + i}"

    @property
    def ray_address(self) -> str:
        """GCS address of the Ray head (in host 0)."""
        return f"{self.host_ip(0)}:{self.ray_port}"

    @property
    def origin_url(self) -> str:
        """Base URL of the origin's HTTP file server."""
        return f"http://{self.origin_ip}:{self.http_port}"

    @property
    def s3_endpoint(self) -> str:
        """Endpoint URL of moto's S3 server in the origin namespace."""
        return f"http://{self.origin_ip}:{self.s3_port}"

    def namespaces(self) -> list[str]:
        """Every namespace this testbed makes, switch first."""
        return [self.switch_ns, self.origin_ns, *(self.host_ns(i) for i in range(self.hosts))]


def run(argv: list[str], timeout: float = COMMAND_TIMEOUT_S, check: bool = True) -> str:
    """Run a command, return its stdout; raise with its stderr when it fails and ``check``."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def existing_namespaces(prefix: str) -> list[str]:
    """Namespaces whose name starts with ``{prefix}-`` (only ones a testbed makes)."""
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line]
    return [n for n in names if n.startswith(f"{prefix}-")]


def namespace_pids(namespaces: list[str]) -> list[int]:
    """Processes living in any of ``namespaces``."""
    pids: list[int] = []
    for ns in namespaces:
        pids += [int(p) for p in run(["ip", "netns", "pids", ns], check=False).split()]
    return pids


def kill_namespace_processes(namespaces: list[str], grace_s: float = 10.0) -> int:
    """SIGTERM every process inside ``namespaces``, SIGKILL those left after ``grace_s``."""
    killed = 0
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in namespace_pids(namespaces):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                killed += 1
        deadline = time.monotonic() + grace_s
        while namespace_pids(namespaces) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not namespace_pids(namespaces):
            break
    return killed


def cleanup_prefix(prefix: str) -> list[str]:
    """Tear down every namespace named ``{prefix}-*``: processes first, then the namespace."""
    namespaces = existing_namespaces(prefix)
    kill_namespace_processes(namespaces)
    for ns in namespaces:
        run(["ip", "netns", "del", ns], check=False)
    return namespaces


def rate_args(rate_mbit: float, latency_ms: float) -> list[str]:
    """``tbf`` arguments for a rate: burst of 5 ms of traffic (at least 64 KiB)."""
    burst = max(64 * 1024, int(rate_mbit * 1e6 / 8 * 0.005))
    return ["tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", f"{latency_ms}ms"]


class Testbed:
    """N emulated hosts with their own addresses and rates, an origin, and a Ray cluster on them.

    Use as a context manager (``with Testbed(cfg) as tb:``): ``up`` on entry, ``down`` on every
    exit.  While up, SIGINT/SIGTERM/SIGHUP raise so that ``down`` runs; an ``atexit`` hook is
    the backstop.
    """

    def __init__(self, config: TestbedConfig) -> None:
        """Remember the shape; nothing is made until :meth:`up`."""
        self.config = config
        self.state = "new"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._old_handlers: dict[int, object] = {}

    def __enter__(self) -> Testbed:
        """Bring the testbed up, tearing it down again if that fails."""
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Tear everything down."""
        self.down()

    # -- lifecycle -------------------------------------------------------------------------

    def up(self) -> None:
        """Make namespaces and links, shape them, start the origin and (optionally) Ray."""
        if os.geteuid() != 0:
            raise PermissionError("the testbed needs root (ip netns, tc)")
        self._install_trap()
        cfg = self.config
        cleanup_prefix(cfg.prefix)
        shutil.rmtree(cfg.root, ignore_errors=True)
        for sub in ("logs", "origin", "dest", "ray"):
            (cfg.root / sub).mkdir(parents=True, exist_ok=True)
        self.state = "up"
        self._make_network()
        self._start_origin()
        if cfg.s3:
            self._start_s3()
        if cfg.ray:
            self._start_ray()

    def down(self) -> None:
        """Kill every process in our namespaces, delete them; idempotent."""
        if self.state == "down":
            return
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        cleanup_prefix(self.config.prefix)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        self.state = "down"
        self._restore_trap()

    def _install_trap(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):  # not in the main thread
                self._old_handlers[sig] = signal.signal(sig, handler)
        atexit.register(self.down)

    def _restore_trap(self) -> None:
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)  # type: ignore[arg-type]
        self._old_handlers.clear()
        atexit.unregister(self.down)

    # -- network ---------------------------------------------------------------------------

    def _make_network(self) -> None:
        cfg = self.config
        sw = cfg.switch_ns
        for ns in cfg.namespaces():
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            if cfg.tcp_cc:  # else the namespace inherits the machine's congestion control
                sysctl = ["sysctl", "-q", "-w", f"net.ipv4.tcp_congestion_control={cfg.tcp_cc}"]
                run(["ip", "netns", "exec", ns, *sysctl])
        run(["ip", "-n", sw, "link", "add", "br0", "mtu", str(cfg.mtu), "type", "bridge"])
        run(["ip", "-n", sw, "link", "set", "br0", "up"])
        origin_rate = cfg.origin_rate_mbit or cfg.rate_mbit
        self._link(cfg.origin_ns, "origin", cfg.origin_ip, origin_rate)
        for i in range(cfg.hosts):
            self._link(cfg.host_ns(i), f"h{i}", cfg.host_ip(i), cfg.rate_mbit)

    def _link(self, ns: str, port: str, ip: str, rate_mbit: float) -> None:
        """A veth from ``ns``'s eth0 to switch port ``port``, shaped both ways to ``rate_mbit``."""
        sw = self.config.switch_ns
        mtu = str(self.config.mtu)
        run(["ip", "link", "add", "eth0", "mtu", mtu, "netns", ns, "type", "veth",
             "peer", port, "mtu", mtu, "netns", sw])  # fmt: skip
        run(["ip", "-n", sw, "link", "set", port, "master", "br0"])
        run(["ip", "-n", sw, "link", "set", port, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        shape = rate_args(rate_mbit, self.config.latency_ms)
        run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", "eth0", "root", *shape])
        run(["ip", "netns", "exec", sw, "tc", "qdisc", "replace", "dev", port, "root", *shape])

    def tcp_cc(self) -> str:
        """The TCP congestion control the hosts use (set, or inherited from the machine)."""
        argv = ["sysctl", "-n", "net.ipv4.tcp_congestion_control"]
        return run(["ip", "netns", "exec", self.config.host_ns(0), *argv]).strip()

    def tcp_segments(self, ns: str) -> dict[str, int]:
        """TCP segments ``ns`` has sent so far, and how many of them were retransmissions."""
        lines = [
            ln.split()
            for ln in run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]).splitlines()
        ]
        names, values = [ln for ln in lines if ln and ln[0] == "Tcp:"][:2]
        tcp = dict(zip(names[1:], values[1:], strict=True))
        return {"out": int(tcp["OutSegs"]), "retrans": int(tcp["RetransSegs"])}

    def iface_bytes(self, ns: str) -> dict[str, int]:
        """Bytes sent and received so far by ``ns``'s eth0 (headers included)."""
        link = json.loads(run(["ip", "-n", ns, "-s", "-j", "link", "show", "eth0"]))[0]
        return {"tx": link["stats64"]["tx"]["bytes"], "rx": link["stats64"]["rx"]["bytes"]}

    # -- processes -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment for everything started inside the testbed."""
        env = dict(os.environ)
        env.update(
            RAY_USAGE_STATS_ENABLED="0",
            # Ray 2.60 turns token auth on for a head that finds ~/.ray/auth_token (which any
            # local ray.init() on this machine creates) while joining raylets leave it off; say
            # it explicitly so the testbed's nodes agree whatever the home directory holds.
            RAY_AUTH_MODE="disabled",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            RAY_ADDRESS=self.config.ray_address,
            RAYFLY_TESTBED_ROOT=str(self.config.root),
        )
        if self.config.nice:
            env["RAY_worker_niceness"] = "0"  # workers keep the testbed's niceness (Ray adds 15)
        env.update(self.config.extra_env)
        return env

    def argv_in(self, ns: str, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run inside namespace ``ns`` (at the testbed's niceness)."""
        nice = ["nice", "-n", str(self.config.nice)] if self.config.nice else []
        return ["ip", "netns", "exec", ns, *nice, *argv]

    def run_in(
        self, ns: str, argv: list[str], timeout: float = COMMAND_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` to completion (bounded by ``timeout``)."""
        proc = subprocess.run(
            self.argv_in(ns, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            cwd=REPO_ROOT,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"in {ns}: {' '.join(argv)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def spawn_in(self, ns: str, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        """Start a long-lived process inside ``ns``, output to ``logs/{log_name}``."""
        log = open(self.config.root / "logs" / log_name, "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            self.argv_in(ns, argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            cwd=REPO_ROOT,
        )
        self._procs.append(proc)
        return proc

    def _wait_for_file(self, path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"process for {path.name} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear within {timeout}s")
            time.sleep(0.1)

    def _start_origin(self) -> None:
        cfg = self.config
        ready = cfg.root / "logs" / "origin.ready"
        argv = [sys.executable, "-m", "bench.testbed.origin", "--root", str(cfg.root / "origin")]
        argv += ["--bind", cfg.origin_ip, "--port", str(cfg.http_port), "--ready-file", str(ready)]
        proc = self.spawn_in(cfg.origin_ns, argv, "origin.log")
        self._wait_for_file(ready, proc, timeout=30)

    def _start_s3(self) -> None:
        cfg = self.config
        moto = shutil.which("moto_server") or "moto_server"
        argv = [moto, "-H", cfg.origin_ip, "-p", str(cfg.s3_port)]
        proc = self.spawn_in(cfg.origin_ns, argv, "moto.log")
        probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"
        deadline = time.monotonic() + 30
        while True:
            check = [sys.executable, "-c", probe, cfg.origin_ip, str(cfg.s3_port)]
            if self.run_in(cfg.origin_ns, check, timeout=10, check=False).returncode == 0:
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start; see logs/moto.log")
            time.sleep(0.3)

    def ray_start_argv(self, i: int) -> list[str]:
        """``ray start`` for host ``i``: the head in host 0, a raylet joining it elsewhere."""
        cfg = self.config
        argv = [str(Path(sys.executable).with_name("ray")), "start"]
        argv += ["--node-ip-address", cfg.host_ip(i), "--num-cpus", str(cfg.ray_num_cpus)]
        argv += ["--object-store-memory", str(cfg.object_store_bytes)]
        argv += ["--temp-dir", str(cfg.root / "ray" / f"h{i}"), "--disable-usage-stats"]
        argv += ["--resources", json.dumps({f"{cfg.prefix}_h{i}": 1})]
        if i == 0:
            argv += ["--head", "--port", str(cfg.ray_port), "--include-dashboard=false"]
        else:
            argv += ["--address", cfg.ray_address]
        return argv

    def _start_ray(self) -> None:
        """Head first, then raylets a few at a time: ``ray start`` gives a node 30 s to register,
        which a loaded 2-core machine can miss when many start at once; a failed start is
        cleaned out of its namespace and retried."""
        cfg = self.config
        for attempt in range(3):
            if not self._ray_start_group([0]):
                break
            kill_namespace_processes([cfg.host_ns(0)])
            if attempt == 2:
                raise RuntimeError("ray start failed in host 0; see logs/ray-start-h0.log")
        pending = list(range(1, cfg.hosts))
        for _attempt in range(3):
            failed = []
            for group in range(0, len(pending), RAY_START_PARALLEL):
                failed += self._ray_start_group(pending[group : group + RAY_START_PARALLEL])
            if not failed:
                break
            kill_namespace_processes([cfg.host_ns(i) for i in failed])
            pending = failed
        else:
            raise RuntimeError(f"ray start failed in hosts {pending}; see logs/ray-start-h*.log")
        self.wait_for_nodes(timeout=180)

    def _ray_start_group(self, hosts: list[int]) -> list[int]:
        """``ray start`` in ``hosts`` at once; return the hosts where it failed."""
        cfg = self.config
        procs = {}
        for i in hosts:
            log = open(cfg.root / "logs" / f"ray-start-h{i}.log", "ab")  # noqa: SIM115
            env = self.env()
            if env.get("RAYFLY_CACHE_DIR"):  # hosts share the filesystem: a cache each
                env["RAYFLY_CACHE_DIR"] = str(Path(env["RAYFLY_CACHE_DIR"]) / f"h{i}")
            env.update(cfg.host_env.get(i, {}))  # this host's own settings (its raylet's)
            procs[i] = subprocess.Popen(
                self.argv_in(cfg.host_ns(i), self.ray_start_argv(i)),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
            )
        return [i for i, proc in procs.items() if proc.wait(timeout=300) != 0]

    def wait_for_nodes(self, timeout: float) -> None:
        """Block until the cluster reports every host's node alive (bounded by ``timeout``)."""
        code = (
            "import ray,sys,time\n"
            "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
            "end = time.monotonic() + float(sys.argv[3])\n"
            "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]):\n"
            "    assert time.monotonic() < end, 'nodes did not join'\n"
            "    time.sleep(0.5)\n"
        )
        argv = [sys.executable, "-c", code, self.config.ray_address, str(self.config.hosts)]
        self.run_in(self.config.host_ns(0), [*argv, str(timeout)], timeout=timeout + 60)

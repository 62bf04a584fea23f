"""What one Ray object transfer between two testbed hosts delivers, alone and k at once, against
one plain TCP stream on the same pair of links (issue 9: on the testbed rayfly's transfers add up
to less than the links allow, with neither end saturated).

    python -m bench.ray_pull --rate-mbit 100 --piece-mib 4 --concurrent 1,8 --repeats 5 \
        --parents 3 --out bench/results/ray_pull.json           # as root, from the repository root

A testbed of ``--parents`` + 2 hosts (``bench/testbed``, its own network namespaces, links
shaped to B both ways); hosts 1..``--parents`` hold the objects (actors that ``ray.put`` them,
a batch dealt round-robin over them), the next host pulls them (an actor that ``ray.get`` s a
batch of references at once), the driver runs in host 0 and only times. Every
batch is of new objects, so each ``get`` is a real pull over the link. The TCP reference is one
socket stream from host 1 to the pulling host. With ``--both-ways`` the pulling host sends
a TCP stream of as many bytes to host 1 while it pulls, as a peer uploads while it downloads.
Rates are goodput over B.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20


def _actors(prefix: str, parents: int) -> tuple[list[Any], Any]:
    """Holders on hosts 1..``parents`` and the puller on the next host (pinned by the testbed's
    resources); every one can also send or receive a TCP stream."""
    import numpy as np
    import ray

    @ray.remote(num_cpus=0)
    class Host:
        def __init__(self) -> None:
            self.kept: list[Any] = []

        def make(self, count: int, nbytes: int) -> list[Any]:
            self.kept = [ray.put(np.random.bytes(nbytes)) for _ in range(count)]
            return [[r] for r in self.kept]

        def pull(self, boxes: list[list[Any]]) -> float:
            t0 = time.perf_counter()
            ray.get([b[0] for b in boxes], timeout=300)
            return time.perf_counter() - t0

        def serve_tcp(self, host: str, nbytes: int) -> int:
            """Listen on ``host``; send ``nbytes`` to the first client (in a thread)."""
            import threading

            srv = socket.create_server((host, 0))
            payload = memoryview(np.random.bytes(MiB))

            def send() -> None:
                with srv, srv.accept()[0] as conn:
                    left = nbytes
                    while left:
                        left -= conn.send(payload[: min(len(payload), left)])

            threading.Thread(target=send, daemon=True).start()
            return int(srv.getsockname()[1])

        def tcp(self, host: str, port: int, nbytes: int) -> float:
            t0 = time.perf_counter()
            with socket.create_connection((host, port), timeout=60) as conn:
                buf = bytearray(MiB)
                got = 0
                while got < nbytes:
                    n = conn.recv_into(buf)
                    if not n:
                        raise RuntimeError(f"TCP stream ended after {got} of {nbytes} bytes")
                    got += n
            return time.perf_counter() - t0

    holders = [
        Host.options(resources={f"{prefix}_h{i}": 0.01}).remote() for i in range(1, parents + 1)
    ]
    puller = Host.options(resources={f"{prefix}_h{parents + 1}": 0.01}).remote()
    return holders, puller


def driver(args: argparse.Namespace) -> None:
    """Inside host 0: time the pulls and the TCP stream; print one JSON line."""
    import ray

    ray.init(address=args.ray_address, log_to_driver=False)
    holders, puller = _actors(args.prefix, args.parents)
    holder = holders[0]
    B = args.rate_mbit * 1e6 / 8
    nbytes = int(args.piece_mib * MiB)
    out: dict[str, Any] = {"piece_bytes": nbytes, "rate_bytes_s": B, "ray": {}, "tcp": []}
    out["upload_while_pulling"] = {}
    ray.get(puller.pull.remote(ray.get(holder.make.remote(1, MiB))))  # warm both actors up
    for k in [int(x) for x in args.concurrent.split(",")]:
        shares, ups = [], []
        for _ in range(args.repeats):
            # k objects, dealt round-robin over the holders: k pulls at once from them all
            counts = [k // len(holders) + (i < k % len(holders)) for i in range(len(holders))]
            made = [h.make.remote(c, nbytes) for h, c in zip(holders, counts, strict=True) if c]
            boxes = [box for batch in ray.get(made) for box in batch]
            upload = None
            if args.both_ways:  # the puller's uplink busy too, as a peer's is: a stream to host 1
                up_bytes = k * nbytes
                port = ray.get(puller.serve_tcp.remote(args.puller_ip, up_bytes))
                upload = holder.tcp.remote(args.puller_ip, port, up_bytes)
            seconds = ray.get(puller.pull.remote(boxes))
            shares.append(k * nbytes / seconds / B)
            if upload is not None:
                ups.append(up_bytes / ray.get(upload) / B)
        out["ray"][str(k)] = shares
        out["upload_while_pulling"][str(k)] = ups
    total = max(nbytes * 8, 32 * MiB)
    for _ in range(args.repeats):
        port = ray.get(holder.serve_tcp.remote(args.host1_ip, total))
        seconds = ray.get(puller.tcp.remote(args.host1_ip, port, total))
        out["tcp"].append(total / seconds / B)
    out["tcp_bytes"] = total
    print(json.dumps(out))


def main() -> None:
    """Make the testbed, run :func:`driver` in host 0, write and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate-mbit", type=float, default=100.0)
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--nice", type=int, default=-5)
    p.add_argument("--piece-mib", type=float, default=4.0)
    p.add_argument("--concurrent", default="1,8", help="batch sizes, e.g. 1,8")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--parents", type=int, default=1, help="hosts holding the objects")
    p.add_argument(
        "--both-ways", action="store_true", help="the puller sends a TCP stream while it pulls"
    )
    p.add_argument("--tcp-cc", help="the testbed's TCP congestion control (default: the machine's)")
    p.add_argument("--puller-ip", help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="rp3")
    p.add_argument("--subnet", default="10.216.0")
    p.add_argument("--out", type=Path)
    p.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ray-address", help=argparse.SUPPRESS)
    p.add_argument("--host1-ip", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.driver:
        driver(args)
        return
    from bench.testbed.netns import Testbed, TestbedConfig

    cfg = TestbedConfig(
        hosts=args.parents + 2,
        prefix=args.prefix,
        subnet=args.subnet,
        rate_mbit=args.rate_mbit,
        mtu=args.mtu,
        nice=args.nice,
        tcp_cc=args.tcp_cc,
    )
    with Testbed(cfg) as tb:
        argv = [sys.executable, "-m", "bench.ray_pull", "--driver"]
        argv += ["--ray-address", cfg.ray_address, "--host1-ip", cfg.host_ip(1)]
        argv += ["--prefix", args.prefix, "--rate-mbit", str(args.rate_mbit)]
        argv += ["--piece-mib", str(args.piece_mib), "--concurrent", args.concurrent]
        argv += ["--repeats", str(args.repeats), "--parents", str(args.parents)]
        argv += ["--puller-ip", cfg.host_ip(args.parents + 1)]
        argv += ["--both-ways"] if args.both_ways else []
        proc = tb.run_in(cfg.host_ns(0), argv, timeout=1200, check=False)
        tcp_cc = tb.tcp_cc()
    if proc.returncode != 0:
        raise SystemExit(f"driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["args"] = {k: v for k, v in vars(args).items() if k not in ("driver", "out")}
    result["args"]["out"] = str(args.out) if args.out else None
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result["tcp_cc"] = tcp_cc
    for k, shares in result["ray"].items():
        runs = ", ".join(f"{s:.0%}" for s in shares)
        median = statistics.median(shares)
        print(f"ray: {k} x {args.piece_mib} MiB at once: median {median:.0%} of B (runs {runs})")
        ups = result["upload_while_pulling"][k]
        if ups:
            print(f"     its uplink meanwhile (TCP to host 1): median {statistics.median(ups):.0%}")
    tcp = result["tcp"]
    runs = ", ".join(f"{s:.0%}" for s in tcp)
    mib = result["tcp_bytes"] >> 20
    print(f"tcp: one stream of {mib} MiB: median {statistics.median(tcp):.0%} of B (runs {runs})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""``python -m bench.testbed {up,down,check}`` — run as root from the repository root.

* ``up``: make the testbed and hold it (bounded by ``--hold``) until Ctrl-C, then tear it down.
  While it holds, ``ip netns exec rfy-h0 bash`` gives a shell on host 0 with Ray at
  ``10.213.0.10:6379``.
* ``down``: remove whatever a testbed with this prefix left behind (namespaces and the
  processes inside them).
* ``check``: make a testbed without Ray, measure origin -> host throughput, tear down.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench.testbed.netns import Testbed, TestbedConfig, cleanup_prefix

FETCH = (
    "import sys,time,urllib.request\n"
    "t=time.monotonic(); n=0\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=60) as r:\n"
    "    while b := r.read(1<<20): n += len(b)\n"
    "print(n, time.monotonic()-t)\n"
)


def config_from(args: argparse.Namespace, ray: bool) -> TestbedConfig:
    """A :class:`TestbedConfig` from the common command-line options."""
    return TestbedConfig(
        hosts=args.hosts,
        prefix=args.prefix,
        subnet=args.subnet,
        rate_mbit=args.rate_mbit,
        origin_rate_mbit=args.origin_rate_mbit,
        ray=ray,
    )


def check(cfg: TestbedConfig, mib: int) -> dict[str, float]:
    """Download ``mib`` MiB from the origin into host 0 and report the rate against the link's."""
    with Testbed(cfg) as tb:
        (cfg.root / "origin" / "check.bin").write_bytes(os.urandom(mib << 20))
        out = tb.run_in(
            cfg.host_ns(0), [sys.executable, "-c", FETCH, f"{cfg.origin_url}/check.bin"]
        )
        nbytes, seconds = out.stdout.split()
        mbit = int(nbytes) * 8 / float(seconds) / 1e6
        return {
            "bytes": int(nbytes),
            "seconds": float(seconds),
            "mbit_s": mbit,
            "link_mbit": min(cfg.rate_mbit, cfg.origin_rate_mbit or cfg.rate_mbit),
        }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.testbed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["up", "down", "check"])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--prefix", default="rfy")
    parser.add_argument("--subnet", default="10.213.0")
    parser.add_argument("--rate-mbit", type=float, default=200.0)
    parser.add_argument("--origin-rate-mbit", type=float)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--hold", type=float, default=3600.0, help="seconds to hold (up)")
    parser.add_argument("--mib", type=int, default=16, help="size for check")
    args = parser.parse_args()
    if args.command == "down":
        print(json.dumps({"removed": cleanup_prefix(args.prefix)}))
    elif args.command == "check":
        print(json.dumps(check(config_from(args, ray=False), args.mib)))
    else:
        cfg = config_from(args, ray=not args.no_ray)
        with Testbed(cfg):
            print(
                json.dumps(
                    {
                        "ray_address": cfg.ray_address,
                        "origin": cfg.origin_url,
                        "hosts": [cfg.host_ns(i) for i in range(cfg.hosts)],
                    }
                ),
                flush=True,
            )
            end = time.monotonic() + args.hold
            while time.monotonic() < end:
                time.sleep(1)


if __name__ == "__main__":
    main()

"""CPU per small S3 GET (issue 9, small files): rayfly's S3 read path (the client) and moto's
server (the origin), each in its own process, so the two are counted apart.

    python -m bench.s3_get_cpu --objects 2000 --size 4KiB --at-once 32

The server process makes the objects in moto's backend (:mod:`rayfly.demo_s3`); the client
lists them and reads each once with :func:`rayfly.source.read_range_async` (as a pack's piece
does), ``--at-once`` at a time. Prints one JSON line: CPU milliseconds per GET on each side
(the server's includes its start and the listing), wall seconds and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from rayfly import source
from rayfly.config import parse_size

BUCKET = "cpubench"


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def serve(objects: int, size: int) -> None:
    """The server side: make the objects, print the options, wait for a line, print the CPU."""
    from rayfly.demo_s3 import CountingS3Server

    server = CountingS3Server().start()
    server.put_in_backend(BUCKET, ((f"p/f{i:06d}", os.urandom(size)) for i in range(objects)))
    print(json.dumps(server.options()), flush=True)
    sys.stdin.readline()
    print(json.dumps({"cpu": cpu_seconds(), "gets": server.object_gets()}), flush=True)
    server.stop()


async def read_all(files: list[source.SourceFile], options: dict, at_once: int) -> None:
    slots = asyncio.Semaphore(at_once)

    async def one(f: source.SourceFile) -> None:
        async with slots:
            await source.read_range_async(f.url, options, 0, f.size, None, f.version)

    await asyncio.gather(*(one(f) for f in files))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=2000)
    p.add_argument("--size", default="4KiB")
    p.add_argument("--at-once", type=int, default=32)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.objects, parse_size(args.size))
        return
    cmd = [sys.executable, "-m", "bench.s3_get_cpu", "--serve", "--objects", str(args.objects)]
    server = subprocess.Popen(
        [*cmd, "--size", args.size], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    options = json.loads(server.stdout.readline())
    files = source.list_files(f"s3://{BUCKET}/p/", options)
    t0, wall = cpu_seconds(), time.perf_counter()
    asyncio.run(read_all(files, options, args.at_once))
    client, wall = cpu_seconds() - t0, time.perf_counter() - wall
    out, _ = server.communicate("\n", timeout=60)
    origin = json.loads(out)
    n = len(files)
    print(
        json.dumps(
            {
                "gets": origin["gets"],
                "client_ms_per_get": round(1000 * client / n, 2),
                "server_ms_per_get": round(1000 * origin["cpu"] / n, 2),
                "wall_s": round(wall, 1),
                "at_once": args.at_once,
                "load": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()

"""The testbed's origin: a small HTTP file server with Range support and a byte counter.

``GET``/``HEAD /{name}`` serve files under ``--root`` (single ranges: ``bytes=a-b``, ``a-``,
``-n``).  ``GET /_rfy/stats`` returns ``{"bytes_served", "requests", "range_requests"}`` and
``POST /_rfy/reset`` zeroes them; bytes are counted as they are written to the socket, so an
aborted transfer counts only what left.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

from aiohttp import web

CHUNK = 256 * 1024
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
STATS = web.AppKey("stats", dict)
ROOT = web.AppKey("root", Path)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return ``(start, end_exclusive)`` for a single byte range, ``None`` for the whole file.

    Raises ``ValueError`` for a range that cannot be satisfied or parsed.
    """
    if not header:
        return None
    match = RANGE_RE.match(header.strip())
    if not match or match.groups() == ("", ""):
        raise ValueError(header)
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = size if last == "" else min(size, int(last) + 1)
    if start >= end:
        raise ValueError(header)
    return start, end


async def serve_file(request: web.Request) -> web.StreamResponse:
    """Serve one file, or one range of it, counting the bytes written."""
    root: Path = request.app[ROOT]
    path = (root / request.match_info["name"]).resolve()
    if root.resolve() not in path.parents or not path.is_file():
        raise web.HTTPNotFound()
    size = path.stat().st_size
    try:
        span = parse_range(request.headers.get("Range"), size)
    except ValueError:
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={"Content-Range": f"bytes */{size}"}
        ) from None
    start, end = span or (0, size)
    resp = web.StreamResponse(status=206 if span else 200)
    resp.headers.update({"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
    if span:
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    resp.content_length = end - start
    stats = request.app[STATS]
    stats["requests"] += 1
    stats["range_requests"] += bool(span)
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    with path.open("rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                break
            await resp.write(chunk)
            stats["bytes_served"] += len(chunk)
            left -= len(chunk)
    await resp.write_eof()
    return resp


async def get_stats(request: web.Request) -> web.Response:
    """Counters since start or the last reset."""
    return web.json_response(request.app[STATS])


async def reset_stats(request: web.Request) -> web.Response:
    """Zero the counters."""
    request.app[STATS].update(bytes_served=0, requests=0, range_requests=0)
    return web.json_response(request.app[STATS])


def make_app(root: Path) -> web.Application:
    """The aiohttp application serving ``root``."""
    app = web.Application()
    app[ROOT] = root
    app[STATS] = {"bytes_served": 0, "requests": 0, "range_requests": 0}
    app.router.add_get("/_rfy/stats", get_stats)
    app.router.add_post("/_rfy/reset", reset_stats)
    app.router.add_route("GET", "/{name:.+}", serve_file)
    app.router.add_route("HEAD", "/{name:.+}", serve_file)
    return app


async def main_async(args: argparse.Namespace) -> None:
    """Serve until killed (the testbed's teardown ends this process)."""
    runner = web.AppRunner(make_app(Path(args.root)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.bind, args.port).start()
    if args.ready_file:
        Path(args.ready_file).write_text(f"{args.bind}:{args.port}\n")
    await asyncio.sleep(args.max_seconds)
    await runner.cleanup()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--ready-file")
    parser.add_argument("--max-seconds", type=float, default=6 * 3600, help="bound on lifetime")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

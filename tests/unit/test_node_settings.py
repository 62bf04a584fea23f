"""Settings read on the node (rates, TTL, watermarks, GC period) and the token bucket."""

from __future__ import annotations

import asyncio

import pytest

from rayfly.config import (
    NodeConfig,
    from_env,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_switch,
)
from rayfly.errors import InvalidInput
from rayfly.ratelimit import TokenBucket

MiB = 1 << 20


def test_parsers():
    assert parse_rate("100MiB") == parse_rate("100MiB/s") == 100 * MiB
    assert parse_rate("unlimited") is None and parse_rate("0") is None
    assert parse_duration("7d") == 7 * 86400 and parse_duration("15m") == 900
    assert parse_duration("off") is None and parse_duration("90") == 90
    assert parse_percent("80%") == 0.8 and parse_percent("0.6") == 0.6
    assert parse_switch("on") is parse_switch("1") is parse_switch(" True ") is True
    assert parse_switch("off") is parse_switch("0") is parse_switch("no") is False


@pytest.mark.parametrize(
    ("fn", "text", "message"),
    [
        (parse_rate, "fast", "invalid rate 'fast'"),
        (parse_duration, "soon", "invalid duration"),
        (parse_duration, "-1h", "invalid duration"),
        (parse_percent, "150%", "invalid share"),
        (parse_switch, "maybe", "invalid switch 'maybe': use on or off"),
    ],
)
def test_bad_values_are_clear_errors(fn, text, message):
    with pytest.raises(InvalidInput, match=message):
        fn(text)


def test_node_config_from_the_environment():
    env = {
        "RAYFLY_DOWNLOAD_RATE": "100MiB",
        "RAYFLY_CACHE_TTL": "2h",
        "RAYFLY_CACHE_HIGH_WATERMARK": "90%",
        "RAYFLY_GC_INTERVAL": "off",
    }
    node = from_env(NodeConfig, env)
    assert node.download_rate == 100 * MiB and node.upload_rate is None
    assert node.cache_ttl == 7200 and node.cache_high_watermark == 0.9
    assert node.gc_interval is None
    assert node.local_reads is True
    assert from_env(NodeConfig, {"RAYFLY_LOCAL_READS": "off"}).local_reads is False
    with pytest.raises(InvalidInput, match="RAYFLY_UPLOAD_RATE='fast'"):
        from_env(NodeConfig, {"RAYFLY_UPLOAD_RATE": "fast"})


def test_token_bucket_paces_to_its_rate():
    clock = [0.0]
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)
        clock[0] += s

    bucket = TokenBucket(10 * MiB, clock=lambda: clock[0], sleep=sleep)

    async def run() -> None:
        for _ in range(5):
            await bucket.take(4 * MiB)

    asyncio.run(run())
    assert clock[0] == pytest.approx(20 * MiB / (10 * MiB))  # 20 MiB at 10 MiB/s: 2 s
    assert TokenBucket(None).rate is None

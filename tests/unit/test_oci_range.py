"""Range headers of blob requests."""

from __future__ import annotations

import pytest

from rayfly.proxy.oci import RangeNotSatisfiable
from rayfly.proxy.server import parse_range


@pytest.mark.parametrize(
    ("header", "want"),
    [
        (None, None),
        ("", None),
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=-500", (0, 99)),
    ],
)
def test_ranges(header, want):
    assert parse_range(header, 100) == want


@pytest.mark.parametrize(
    "header", ["bytes=100-", "bytes=9-3", "bytes=-", "items=0-1", "bytes=0-1,5-6", "bytes=a-b"]
)
def test_bad_ranges(header):
    with pytest.raises(RangeNotSatisfiable) as err:
        parse_range(header, 100)
    assert err.value.status == 416

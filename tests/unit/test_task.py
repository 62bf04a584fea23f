import pytest

from rayfly.errors import InvalidInput
from rayfly.task import (
    PieceLimits,
    TaskInfo,
    default_piece_size,
    normalize_url,
    piece_bounds,
    piece_count,
    task_id_for,
    validate_task_id,
)

MiB = 1 << 20


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, 4 * MiB),
        (1, 4 * MiB),
        (256 * MiB, 4 * MiB),
        (257 * MiB, 8 * MiB),
        (1 << 30, 16 * MiB),
        (4 << 30, 16 * MiB),
        (100 << 30, 16 * MiB),
        (1 << 40, 16 * MiB),
    ],
)
def test_piece_size_rule(length, expected):
    assert default_piece_size(length) == expected


def limits(cap: int, fits: int) -> PieceLimits:
    return PieceLimits(cap=cap, fits=fits)


@pytest.mark.parametrize(
    ("length", "measured", "expected"),
    [
        (512 * MiB, None, 8 * MiB),
        (512 * MiB, limits(4 * MiB, 8 * MiB), 4 * MiB),  # slow links: smaller pieces
        (512 * MiB, limits(2 * MiB, 4 * MiB), 4 * MiB),  # 100 Mbit/s, 8 slots: 4 MiB for CPU
        (512 * MiB, limits(1 * MiB, 2 * MiB), 2 * MiB),  # 50 Mbit/s: 2 MiB move within 4 s
        (512 * MiB, limits(512 << 10, 1 * MiB), 1 * MiB),  # 25 Mbit/s: 1 MiB
        (512 * MiB, limits(64 << 10, 64 << 10), 1 * MiB),  # never below 1 MiB
        # the every-slot estimate low, the transfers fast (a busy CPU, not a slow link): the
        # CPU floor stands
        (512 * MiB, limits(512 << 10, 8 * MiB), 4 * MiB),
        (100 * MiB, limits(1 * MiB, 2 * MiB), 2 * MiB),  # a small file on slow links too
        (1 << 30, limits(8 * MiB, 16 * MiB), 8 * MiB),
        (1 << 30, limits(1 << 30, 1 << 30), 16 * MiB),  # fast links change nothing
        (100 * MiB, limits(8 * MiB, 16 * MiB), 4 * MiB),  # a cap never makes a piece larger
    ],
)
def test_a_piece_size_from_the_measured_links(length, measured, expected):
    assert default_piece_size(length, measured) == expected


def test_layout_covers_every_byte_once():
    length, size = 10 * MiB + 123, 4 * MiB
    assert piece_count(length, size) == 3
    ranges = [piece_bounds(length, size, i) for i in range(3)]
    assert ranges == [(0, 4 * MiB), (4 * MiB, 8 * MiB), (8 * MiB, 10 * MiB + 123)]
    with pytest.raises(IndexError):
        piece_bounds(length, size, 3)


def test_empty_task_has_one_empty_piece():
    info = TaskInfo("t", "file:///x", 0, 4 * MiB)
    assert info.n_pieces == 1 and info.piece_range(0) == (0, 0)


def test_signature_params_do_not_change_the_task():
    a = "https://bucket.s3.amazonaws.com/data/x.bin?X-Amz-Signature=abc&X-Amz-Date=1&versionId=7"
    b = "https://BUCKET.s3.amazonaws.com/data/x.bin?versionId=7&X-Amz-Signature=zzz&X-Amz-Date=2"
    assert task_id_for(a) == task_id_for(b)
    assert normalize_url(a) == "https://bucket.s3.amazonaws.com/data/x.bin?versionId=7"
    assert task_id_for(a) != task_id_for(a.replace("versionId=7", "versionId=8"))
    assert task_id_for(a) != task_id_for(a, tag="v2")
    assert task_id_for(a) != task_id_for(a, byte_range=(0, 10))


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 200, "a b"])
def test_task_ids_are_file_name_safe(bad):
    with pytest.raises(InvalidInput):
        validate_task_id(bad)

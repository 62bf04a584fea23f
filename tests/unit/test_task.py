import itertools

import pytest

from rayfly.errors import InvalidInput
from rayfly.task import (
    TAIL_PIECES,
    TAIL_SPLIT,
    Cut,
    PieceLimits,
    SourceSpec,
    TaskInfo,
    default_piece_size,
    info_for,
    normalize_url,
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


@pytest.mark.parametrize(
    ("length", "measured", "expected"),
    [
        (80 * MiB, None, 8 * MiB),  # a file: 4 MiB
        (24 * MiB, None, 8 * MiB),
        (1 << 30, None, 16 * MiB),  # large blobs as large files
        (80 * MiB, limits(1 << 30, 1 << 30), 8 * MiB),
        (80 * MiB, limits(2 * MiB, 4 * MiB), 4 * MiB),  # 100 Mbit/s: yields as a file's does
        (80 * MiB, limits(1 * MiB, 2 * MiB), 2 * MiB),  # 50 Mbit/s
    ],
)
def test_a_higher_floor_for_pieces_that_cost_more(length, measured, expected):
    assert default_piece_size(length, measured, floor=8 * MiB) == expected


def test_layout_covers_every_byte_once():
    length, size = 10 * MiB + 123, 4 * MiB
    cut = Cut(length, size)
    assert cut.n_pieces == 3
    ranges = [cut.bounds(i) for i in range(3)]
    assert ranges == [(0, 4 * MiB), (4 * MiB, 8 * MiB), (8 * MiB, 10 * MiB + 123)]
    with pytest.raises(IndexError):
        cut.bounds(3)
    with pytest.raises(InvalidInput, match="piece size must be positive"):
        Cut(length, 0)


def test_the_last_pieces_of_a_default_cut_are_split():
    cut = Cut(512 * MiB, 4 * MiB, 2)  # the testbed's task: the last 8 MiB in 2 MiB pieces
    assert cut.n_pieces == 126 + 4
    assert cut.bounds(125) == (500 * MiB, 504 * MiB) and cut.bounds(126) == (504 * MiB, 506 * MiB)
    assert cut.bounds(129) == (510 * MiB, 512 * MiB)
    odd = Cut(10 * MiB + 5, MiB, 4)  # 11 pieces of 1 MiB: the last 1 MiB + 5 bytes in quarters
    sizes = [end - start for start, end in map(odd.bounds, range(odd.n_pieces))]
    assert sizes == [MiB] * 9 + [MiB // 4] * 4 + [5]
    assert 2 * TAIL_PIECES == 4 and Cut(3 * MiB, MiB, 2).n_pieces == 3  # too few: none split
    assert Cut(3 * MiB, MiB, 2) == Cut(3 * MiB, MiB)  # and the cut is the uniform one
    assert Cut(4 * MiB, MiB, 2).n_pieces == 2 + 4


@pytest.mark.parametrize(
    "cut",
    [Cut(0, MiB, 4), Cut(1, MiB), Cut(10 * MiB + 5, MiB, 4), Cut(64 * MiB, 16 * MiB, 4)]
    + [Cut(n, 4096, 4) for n in (8 * 4096 - 1, 8 * 4096, 9 * 4096 + 77, 100_003)],
)
def test_every_cut_covers_every_byte_once_and_finds_each_bytes_piece(cut):
    ranges = [cut.bounds(i) for i in range(cut.n_pieces)]
    assert ranges[0][0] == 0 and ranges[-1][1] == cut.length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(end > start for start, end in ranges) or cut.length == 0
    for i, (start, end) in enumerate(ranges):
        assert cut.index_of(start) == i and (end == start or cut.index_of(end - 1) == i)


def test_a_default_piece_size_splits_the_tail_and_a_given_one_does_not():
    spec = SourceSpec("http://o/x", task_id="t")
    assert info_for(spec, 512 * MiB, True, None).cut == Cut(512 * MiB, 8 * MiB, TAIL_SPLIT)
    assert info_for(spec, 512 * MiB, True, 4 * MiB).cut == Cut(512 * MiB, 4 * MiB, 1)


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

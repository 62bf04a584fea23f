"""The packing plan of small files (pure: no Ray, no origin)."""

import pytest

from rayfly import pack
from rayfly.config import PackConfig, from_env
from rayfly.errors import InvalidInput
from rayfly.source import SourceFile
from rayfly.task import SourceSpec, task_id_for
from rayfly.version import Version

KiB, MiB = 1 << 10, 1 << 20


def test_small_files_go_into_packs_of_at_most_pack_size_in_listing_order():
    sizes = [32 * KiB] * 100 + [5 * MiB] + [32 * KiB] * 3
    plan = pack.plan(sizes, threshold=1 * MiB, pack_size=1 * MiB, piece=4 * MiB)
    assert plan.singles == [100]
    assert [len(p) for p in plan.packs] == [32, 32, 32, 7]
    assert [i for p in plan.packs for i in p] == [i for i in range(104) if i != 100]


def test_a_lone_small_file_and_a_zero_threshold_pack_nothing():
    assert pack.plan([10, 5 * MiB], 1 * MiB, 64 * MiB, 4 * MiB) == pack.PackPlan([0, 1], [])
    assert pack.plan([10, 20, 30], 0, 64 * MiB, 4 * MiB).packs == []


def test_files_larger_than_a_piece_are_never_packed():
    sizes = [2 * MiB, 10, 2 * MiB, 10]
    plan = pack.plan(sizes, threshold=8 * MiB, pack_size=64 * MiB, piece=1 * MiB)
    assert plan.singles == [0, 2]
    assert plan.packs == [[1, 3]]


def test_no_member_crosses_a_piece_boundary():
    offsets, length = pack.layout([3, 3, 3, 4, 1], piece_size=8)
    assert offsets == [0, 3, 8, 11, 15]  # the third would cross 8: it starts the next piece
    assert length == 16
    for off, n in zip(offsets, [3, 3, 3, 4, 1], strict=True):
        assert off // 8 == (off + n - 1) // 8
    with pytest.raises(ValueError, match="does not fit"):
        pack.layout([9], piece_size=8)


def _files(n: int, etag: str = "e") -> list[SourceFile]:
    return [
        SourceFile(f"s3://b/p/f{i}", f"f{i}", 100 + i, Version(etag=f'"{etag}{i}"', size=100 + i))
        for i in range(n)
    ]


def test_pack_identity_is_its_members_urls_and_versions():
    spec = SourceSpec("s3://b/p/", {}, "t")
    files = _files(5)
    a = pack.pack_task(files, [f.version for f in files], spec, 4 * MiB)
    again = pack.pack_task(files, [f.version for f in files], spec, 4 * MiB)
    changed = _files(5, etag="x")
    b = pack.pack_task(changed, [f.version for f in changed], spec, 4 * MiB)
    other_tag = pack.pack_task(files, [f.version for f in files], SourceSpec(spec.url), 4 * MiB)
    assert a.task_id == again.task_id
    assert len({a.task_id, b.task_id, other_tag.task_id}) == 3
    assert a.length == sum(100 + i for i in range(5))
    assert [m.offset for m in a.members] == [0, 100, 201, 303, 406]
    assert pack.content_length(a) == a.length


def test_a_member_alone_is_the_task_it_would_be_unpacked():
    spec = SourceSpec("s3://b/p/", {"anon": True}, "t", source_node="n1")
    files = _files(2)
    task = pack.pack_task(files, [f.version for f in files], spec, 4 * MiB)
    alone = pack.member_task(task, task.members[1])
    assert alone.task_id == task_id_for("s3://b/p/f1", "t", version=files[1].version.key, node="n1")
    assert (alone.url, alone.length, alone.storage_options) == ("s3://b/p/f1", 101, {"anon": True})
    assert alone.source_node == "n1" and not alone.members


def test_members_in_a_piece():
    spec = SourceSpec("s3://b/p/")
    files = [SourceFile(f"s3://b/p/f{i}", f"f{i}", 3) for i in range(5)]
    task = pack.pack_task(files, [Version()] * 5, spec, 8)
    assert [m.offset for m in pack.members_in(task, 8, 16)] == [8, 11]
    assert task.n_pieces == 3


def test_pack_settings_come_from_the_environment():
    cfg = from_env(PackConfig, {"RAYFLY_PACK_THRESHOLD": "64KiB", "RAYFLY_PACK_SIZE": "8MiB"})
    assert (cfg.pack_threshold, cfg.pack_size) == (64 * KiB, 8 * MiB)
    with pytest.raises(InvalidInput, match="RAYFLY_PACK_SIZE"):
        from_env(PackConfig, {"RAYFLY_PACK_SIZE": "0"})


def test_a_piece_of_a_pack_holds_a_bounded_number_of_members():
    assert pack.piece_size_for([4 * KiB] * 20000) == 512 * KiB  # 128 members a piece
    assert pack.piece_size_for([32 * KiB] * 1000) == 4 * MiB
    assert pack.piece_size_for([10] * 50) == pack.MIN_PACK_PIECE
    assert pack.piece_size_for([1 * KiB] * 1000 + [1 * MiB]) == 1 * MiB  # the largest fits
    assert pack.piece_size_for([4 * KiB] * 10, piece_size=8 * MiB) == 8 * MiB

"""Back-to-source against a real HTTP origin on loopback (no Ray)."""

import pytest

from rayfly import source
from rayfly.demo_origin import OriginServer
from rayfly.errors import OriginUnreachable, SourceNotFound


@pytest.fixture
def server(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(bytes(range(256)) * 40)
    s = OriginServer(tmp_path).start()
    yield s
    s.stop()


def test_stat_and_ranges(server):
    url = server.url + "d/a.bin"
    assert source.stat_file(url, {}).size == 10240
    assert source.read_range(url, {}, 256, 512) == bytes(range(256))
    assert server.bytes_served == 256


def test_transient_errors_are_retried(server):
    server.fail_paths["/d/a.bin"] = 2
    assert source.read_range(server.url + "d/a.bin", {}, 0, 16) == bytes(range(16))


def test_missing_and_unreachable(server):
    with pytest.raises(SourceNotFound, match="not found at the origin: http"):
        source.stat_file(server.url + "nope", {})
    with pytest.raises(OriginUnreachable, match="after 4 attempts"):
        source.read_range("http://127.0.0.1:1/x", {}, 0, 1)


def test_list_directory_keeps_relative_paths(tmp_path):
    (tmp_path / "ds" / "sub").mkdir(parents=True)
    (tmp_path / "ds" / "x").write_bytes(b"1")
    (tmp_path / "ds" / "sub" / "y").write_bytes(b"22")
    files = source.list_files(str(tmp_path / "ds"), {})
    assert [(f.relpath, f.size) for f in files] == [("sub/y", 2), ("x", 1)]
    with pytest.raises(SourceNotFound):
        source.list_files(str(tmp_path / "missing"), {})


def test_async_reads_match_sync_reads_and_errors(server):
    import asyncio

    url = server.url + "d/a.bin"

    async def go():
        data = await source.read_range_async(url, {}, 100, 300)
        with pytest.raises(SourceNotFound):
            await source.read_range_async(url + ".missing", {}, 0, 1)
        local = await source.read_range_async(str(server.root / "d" / "a.bin"), {}, 100, 300)
        return data, local

    data, local = asyncio.run(go())
    assert data == local == source.read_range(url, {}, 100, 300)


def test_errors_never_show_signatures_or_passwords(server):
    import asyncio

    server.fail_paths["/d/a.bin"] = 100  # always 503
    secret = "topsecret123"
    url = server.url + f"d/a.bin?X-Amz-Signature={secret}&X-Amz-Credential=AKIAEXAMPLE&v=1"
    with pytest.raises(OriginUnreachable) as sync_err:
        source.read_range(url, {}, 0, 16)

    async def go():
        with pytest.raises(OriginUnreachable) as err:
            await source.read_range_async(url, {}, 0, 16)
        return err

    async_err = asyncio.run(go())
    for err in (sync_err, async_err):
        text = str(err.value)
        assert "503" in text and "a.bin" in text
        assert secret not in text and "AKIAEXAMPLE" not in text, text
    assert source.redact_text(f"see http://bob:hunter2@h/x?sig={secret} and sig={secret}") == (
        "see http://REDACTED@h/x?sig=REDACTED and sig=REDACTED"
    )


def test_origin_errors_do_not_chain_the_unredacted_original(server):
    import traceback

    server.fail_paths["/d/a.bin"] = 100
    signed = server.url + "d/a.bin?X-Amz-Signature=s3cr3t"
    with pytest.raises(OriginUnreachable) as err:
        source.read_range(signed, {}, 0, 16)
    assert "s3cr3t" not in "".join(traceback.format_exception(err.value))

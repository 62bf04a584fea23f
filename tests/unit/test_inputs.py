import pytest

from rayfly.config import PeerConfig, from_env, parse_size
from rayfly.dest import render, safe_relpath, target_path, validate_template
from rayfly.errors import InvalidInput, InvalidStorageOption
from rayfly.source import check_storage_options, parse_storage_options, redact_url


def test_storage_options_parse_types_and_nesting():
    opts = parse_storage_options(
        [
            "endpoint_url=http://127.0.0.1:9000",
            "anon=true",
            "client_kwargs.region_name=us-east-1",
            "max_paths=3",
        ]
    )
    assert opts == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": True,
        "client_kwargs": {"region_name": "us-east-1"},
        "max_paths": 3,
    }


@pytest.mark.parametrize("bad", ["novalue", "=x", "a..b=1"])
def test_malformed_storage_option(bad):
    with pytest.raises(InvalidStorageOption, match="key=value"):
        parse_storage_options([bad])


def test_unknown_storage_option_names_the_key():
    with pytest.raises(InvalidStorageOption, match=r"endpont_url.*S3FileSystem"):
        check_storage_options("s3://b/k", {"endpont_url": "x"})
    check_storage_options("s3://b/k", {"endpoint_url": "x", "anon": True})
    check_storage_options("http://h/x", {"headers": {"a": "b"}})


def test_redaction_hides_signatures_and_userinfo():
    shown = redact_url("https://user:pw@h/x?X-Amz-Signature=secret&v=1")
    assert "secret" not in shown and "pw" not in shown and "v=1" in shown


def test_dest_templates():
    assert (
        render("/d/{node_id}/{hostname}-{node_ip}", "n1", "1.2.3.4", "box") == "/d/n1/box-1.2.3.4"
    )
    for bad in ["/d/{node}", "/d/{", ""]:
        with pytest.raises(InvalidInput):
            validate_template(bad)


def test_relpaths_cannot_escape(tmp_path):
    with pytest.raises(InvalidInput):
        safe_relpath("../etc/passwd")
    with pytest.raises(InvalidInput):
        safe_relpath("/etc/passwd")
    assert target_path(str(tmp_path), None, "f.bin") == tmp_path / "f.bin"
    assert target_path(str(tmp_path / "x.bin"), None, "f.bin") == tmp_path / "x.bin"
    assert target_path(str(tmp_path), "a/b.parquet", "") == tmp_path / "a" / "b.parquet"


def test_sizes_and_env_config():
    assert parse_size("16MiB") == 16 << 20 and parse_size("1g") == 1 << 30
    with pytest.raises(InvalidInput, match="invalid size"):
        parse_size("lots")
    cfg = from_env(PeerConfig, {"RAYFLY_CONCURRENCY": "3", "RAYFLY_CACHE_QUOTA": "1GiB"})
    assert cfg.concurrency == 3 and cfg.cache_quota == 1 << 30
    with pytest.raises(InvalidInput, match="RAYFLY_CONCURRENCY"):
        from_env(PeerConfig, {"RAYFLY_CONCURRENCY": "many"})


def test_http_file_names_come_decoded(tmp_path):
    from rayfly.dest import decode_relpath, url_name

    assert url_name("http://o/dir/my%20file.bin?sig=1") == "my file.bin"
    assert url_name("https://o/a%C3%A9.bin") == "aé.bin"
    assert url_name("s3://bucket/my%20key") == "my%20key"  # keys are literal
    assert url_name("file:///data/my%20file") == "my%20file"
    assert decode_relpath("sub%20dir/x%2By.bin", "http://o/root/") == "sub dir/x+y.bin"
    assert decode_relpath("sub%20dir/x.bin", "s3://b/root/") == "sub%20dir/x.bin"
    assert target_path(str(tmp_path) + "/", None, "http://o/my%20file.bin") == tmp_path / (
        "my file.bin"
    )


@pytest.mark.parametrize("name", ["%2e%2e", "a%2Fb.bin", "nul%00.bin", ".", "%2E"])
def test_http_names_unsafe_once_decoded_are_refused(name):
    from rayfly.dest import decode_relpath, url_name

    with pytest.raises(InvalidInput, match="not a safe file name"):
        url_name(f"http://o/dir/{name}")
    with pytest.raises(InvalidInput, match="not a safe file name"):
        decode_relpath(f"ok/{name}", "http://o/root/")

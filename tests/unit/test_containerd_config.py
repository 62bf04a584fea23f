"""containerd's config.toml: config_path for containerd 1.x (schema 2) and 2.x (schema 3)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from rayfly.cli import main
from rayfly.errors import InvalidInput
from rayfly.proxy.containerd_config import (
    installed_containerd_major,
    parse_containerd_version,
    with_config_path,
)

GOLDEN = Path(__file__).parent / "golden"
HOSTS = "/etc/containerd/certs.d"


@pytest.mark.parametrize("major", [1, 2])
def test_new_config_matches_golden_file(major):
    golden = (GOLDEN / f"containerd{major}-config.toml").read_text()
    assert with_config_path(None, HOSTS, major) == golden


def test_containerd2_key_is_the_images_plugin():
    doc = tomllib.loads(with_config_path(None, HOSTS, 2))
    assert doc["version"] == 3
    assert doc["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == HOSTS


def test_existing_file_decides_the_schema_and_keeps_other_settings():
    v2 = 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.9"\n'
    doc = tomllib.loads(with_config_path(v2, "/x", 2))  # a 1.x config on containerd 2.x
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert doc["version"] == 2 and cri["sandbox_image"] == "pause:3.9"
    assert cri["registry"]["config_path"] == "/x"
    v3 = "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\n  enable_cdi = true\n"
    doc = tomllib.loads(with_config_path(v3, "/x", None))
    assert doc["plugins"]["io.containerd.cri.v1.runtime"]["enable_cdi"] is True
    assert doc["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == "/x"


@pytest.mark.parametrize(
    "text, why",
    [
        ("version = 1\n", "migrate"),
        ("version = 2\n[plugins = 3\n", "not valid TOML"),
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
            'endpoint = ["https://x"]\n',
            "hosts.toml",
        ),
    ],
)
def test_configs_that_cannot_be_merged_are_refused(text, why):
    with pytest.raises(InvalidInput, match=why):
        with_config_path(text, HOSTS, 1)


def test_version_parsing():
    assert parse_containerd_version("containerd github.com/containerd/containerd 1.6.20~ds1 x") == 1
    assert parse_containerd_version("containerd containerd.io v2.1.3 abc123") == 2
    with pytest.raises(InvalidInput):
        parse_containerd_version("no version here")


@pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd not installed")
def test_installed_containerd_reads_the_merged_config(tmp_path):
    """The real containerd (1.6 here) takes our file: `config dump` shows the config_path."""
    major = installed_containerd_major()
    assert major is not None
    conf = tmp_path / "config.toml"
    conf.write_text(with_config_path(None, str(tmp_path / "certs.d"), major))
    out = subprocess.run(
        ["containerd", "--config", str(conf), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert f'config_path = "{tmp_path / "certs.d"}"' in out.stdout


def test_cli_writes_hosts_and_config_keeping_the_original(tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text('version = 2\n# operator comment\n[plugins."io.containerd.grpc.v1.cri"]\n')
    args = ["mirror", "config", "containerd", "--registry", "docker.io"]
    args += ["--hosts-dir", str(tmp_path / "certs.d"), "--config-toml", str(conf)]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "restart containerd" in out.output
    assert (tmp_path / "certs.d" / "docker.io" / "hosts.toml").exists()
    doc = tomllib.loads(conf.read_text())
    registry = doc["plugins"]["io.containerd.grpc.v1.cri"]["registry"]
    assert registry["config_path"] == str(tmp_path / "certs.d")
    assert "# operator comment" in (tmp_path / "config.toml.rayfly-orig").read_text()


def test_cli_print_shows_both_files_and_writes_nothing(tmp_path):
    conf = tmp_path / "config.toml"
    args = ["mirror", "config", "containerd", "--registry", "ghcr.io", "--print"]
    args += ["--hosts-dir", str(tmp_path), "--config-toml", str(conf)]
    out = CliRunner().invoke(main, [*args, "--containerd-version", "2"])
    assert out.exit_code == 0, out.output
    assert '[plugins."io.containerd.cri.v1.images".registry]' in out.output
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_config_fails_and_writes_nothing(tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text("version = 1\n")
    args = ["mirror", "config", "containerd", "--registry", "ghcr.io"]
    out = CliRunner().invoke(
        main, [*args, "--hosts-dir", str(tmp_path), "--config-toml", str(conf)]
    )
    assert out.exit_code == 2
    assert "migrate" in out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]

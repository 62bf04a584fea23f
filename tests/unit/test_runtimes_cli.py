"""`rayfly mirror config ...` and the mirror settings built from the command line (no Ray)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rayfly.cli import main
from rayfly.cli.mirror import build_settings
from rayfly.errors import InvalidInput


def test_config_containerd_writes_hosts_toml(tmp_path):
    out = CliRunner().invoke(
        main,
        ["mirror", "config", "containerd", "--registry", "ghcr.io", "--hosts-dir", str(tmp_path)],
    )
    assert out.exit_code == 0, out.output
    text = (tmp_path / "ghcr.io" / "hosts.toml").read_text()
    assert 'server = "https://ghcr.io"' in text
    assert '[host."http://127.0.0.1:65001"]' in text


def test_config_containerd_refuses_bad_registry(tmp_path):
    out = CliRunner().invoke(
        main, ["mirror", "config", "containerd", "--registry", "../x", "--hosts-dir", str(tmp_path)]
    )
    assert out.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_config_podman_and_docker(tmp_path):
    conf = tmp_path / "rayfly.conf"
    out = CliRunner().invoke(main, ["mirror", "config", "podman", "--write", str(conf)])
    assert out.exit_code == 0, out.output
    assert 'location = "127.0.0.1:65001/docker.io"' in conf.read_text()
    out = CliRunner().invoke(
        main, ["mirror", "config", "crio", "--registry", "ghcr.io", "--registry", "quay.io"]
    )
    assert out.exit_code == 0, out.output
    assert 'location = "127.0.0.1:65001/ghcr.io"' in out.output
    assert 'location = "127.0.0.1:65001/quay.io"' in out.output
    daemon = tmp_path / "daemon.json"
    out = CliRunner().invoke(
        main, ["mirror", "config", "docker", "--daemon-json", str(daemon), "--write"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(daemon.read_text())["registry-mirrors"] == ["http://127.0.0.1:65001"]


def test_build_settings():
    s = build_settings(("lab=127.0.0.1:5000", "ghcr.io=https://ghcr.io"), "lab", ("lab",))
    assert s.default_upstream == "lab"
    assert s.upstreams["lab"].url == "http://127.0.0.1:5000"
    assert s.upstreams["docker.io"].url == "https://registry-1.docker.io"
    with pytest.raises(InvalidInput):
        build_settings(("lab=http://127.0.0.1:5000",), None, ())  # http without --insecure
    with pytest.raises(InvalidInput):
        build_settings((), "nowhere", ())

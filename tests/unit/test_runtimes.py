"""Runtime configuration writers: containerd hosts.toml, registries.conf, daemon.json."""

from __future__ import annotations

import json

import pytest

from rayfly.errors import InvalidInput
from rayfly.proxy import runtimes
from rayfly.proxy.oci import RegistryError

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_hosts_toml_for_docker_hub():
    doc = tomllib.loads(runtimes.containerd_hosts_toml("docker.io"))
    assert doc["server"] == "https://registry-1.docker.io"
    assert doc["host"]["http://127.0.0.1:65001"]["capabilities"] == ["pull", "resolve"]


def test_hosts_toml_without_fallback_and_custom_mirror():
    text = runtimes.containerd_hosts_toml("ghcr.io", "http://127.0.0.1:4000", fallback=False)
    doc = tomllib.loads(text)
    # containerd asks every host of the file for a blob, and adds the registry when no server
    # is written (or the file has no [host] table): the mirror is the server, and the only host
    want = {"server": "http://127.0.0.1:4000", "capabilities": ["pull", "resolve"], "host": {}}
    assert doc == want
    with pytest.raises(InvalidInput, match="give it or --no-fallback, not both"):
        runtimes.containerd_hosts_toml("ghcr.io", server="https://ghcr.io", fallback=False)


def test_write_hosts_keeps_original(tmp_path):
    target = tmp_path / "quay.io" / "hosts.toml"
    target.parent.mkdir()
    target.write_text("# operator's own\n")
    path = runtimes.write_containerd_hosts("quay.io", tmp_path)
    assert path == target
    assert "127.0.0.1:65001" in target.read_text()
    backup = target.with_name("hosts.toml.rayfly-orig")
    assert backup.read_text() == "# operator's own\n"
    runtimes.write_containerd_hosts("quay.io", tmp_path, "http://127.0.0.1:1")
    assert backup.read_text() == "# operator's own\n"
    assert "127.0.0.1:1" in target.read_text()


@pytest.mark.parametrize("registry", ["../etc", "a/b", "", "x y"])
def test_registry_names_checked_before_any_path(tmp_path, registry):
    with pytest.raises(RegistryError):
        runtimes.write_containerd_hosts(registry, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bad_mirror_url():
    with pytest.raises(InvalidInput):
        runtimes.containerd_hosts_toml("docker.io", 'http://x"\n[evil]')


def test_registries_conf_entry():
    doc = tomllib.loads(runtimes.registries_conf_entry("docker.io"))
    reg = doc["registry"][0]
    assert reg["prefix"] == "docker.io" and reg["location"] == "docker.io"
    assert reg["mirror"] == [{"location": "127.0.0.1:65001/docker.io", "insecure": True}]


def test_daemon_json_merges(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"log-driver": "local", "registry-mirrors": ["https://m.example"]}))
    runtimes.write_docker_daemon_json(path)
    doc = json.loads(path.read_text())
    assert doc["log-driver"] == "local"
    assert doc["registry-mirrors"] == ["http://127.0.0.1:65001", "https://m.example"]
    runtimes.write_docker_daemon_json(path)
    assert json.loads(path.read_text())["registry-mirrors"][0] == "http://127.0.0.1:65001"
    assert (tmp_path / "daemon.json.rayfly-orig").exists()


def test_daemon_json_refuses_broken_file():
    with pytest.raises(InvalidInput):
        runtimes.docker_daemon_json("{broken")


def test_registries_conf_one_location_per_registry():
    doc = tomllib.loads(runtimes.registries_conf(["docker.io", "ghcr.io", "docker.io", "lab:5000"]))
    locations = {r["prefix"]: r["mirror"][0]["location"] for r in doc["registry"]}
    assert locations == {
        "docker.io": "127.0.0.1:65001/docker.io",
        "ghcr.io": "127.0.0.1:65001/ghcr.io",
        "lab:5000": "127.0.0.1:65001/lab__5000",
    }
    with pytest.raises(InvalidInput):
        runtimes.registries_conf([])


def test_mirror_ports_on_shared_addresses():
    from rayfly.actors.placement import NodeInfo
    from rayfly.proxy.actor import ports_for

    nodes = [
        NodeInfo("b", "10.0.0.1", ""),
        NodeInfo("a", "10.0.0.1", ""),
        NodeInfo("c", "10.0.0.2", ""),
    ]
    assert ports_for(nodes, 65001) == {"a": 65001, "b": 0, "c": 65001}
    assert ports_for(nodes, 65001, {"b"}) == {"b": 65001, "a": 0, "c": 65001}
    assert ports_for(nodes, 0) == {"a": 0, "b": 0, "c": 0}

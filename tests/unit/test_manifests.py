"""The Kubernetes examples in jobs/: core resources against the Kubernetes schemas (strict), the
pod templates of KubeRay resources as PodTemplates, and the DaemonSet's command run for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import tomllib
import yaml

JOBS = Path(__file__).resolve().parents[2] / "jobs"
K8S_VERSION = "1.30.0"
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService"}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(JOBS.glob("*.yaml")):
        if path.name == "runtime_env.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec", spec)
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [g["template"] for g in groups]


@pytest.mark.parametrize(
    ("name", "doc"), _documents(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_manifest_is_valid(name, doc):
    if doc["kind"] not in KUBERAY_KINDS:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return
    assert doc["apiVersion"] == "ray.io/v1", name
    for template in _pod_templates(doc):
        wrapped = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": doc["metadata"]["name"]},
            "template": template,
        }
        kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)


def test_invalid_manifest_is_caught():
    """The check above can fail: a misspelt field is refused."""
    doc = next(d for n, d in _documents() if d["kind"] == "DaemonSet")
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_mirror_workers_share_the_nodes_network():
    cluster = next(
        d for n, d in _documents() if n == "kuberay-mirror.yaml" and d["kind"] == "RayCluster"
    )
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert group["template"]["spec"]["hostNetwork"] is True


def test_daemonset_command_writes_hosts_toml(tmp_path):
    """The init container's script, run here with the real CLI against a temporary hosts dir."""
    ds = next(d for n, d in _documents() if d["kind"] == "DaemonSet")
    init = ds["spec"]["template"]["spec"]["initContainers"][0]
    script = init["args"][0].replace("/host/etc/containerd/certs.d", str(tmp_path))
    script = script.replace("rayfly mirror", f"{sys.executable} -m rayfly.cli mirror")
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for registry in ("docker.io", "ghcr.io"):
        doc = tomllib.loads((tmp_path / registry / "hosts.toml").read_text())
        assert "http://127.0.0.1:65001" in doc["host"]

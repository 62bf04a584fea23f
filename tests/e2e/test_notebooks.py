"""The notebooks, executed with nbclient on the session's cluster; their key outputs checked.

quickstart.ipynb reads Parquet from S3 (moto's server on loopback); it runs once as is and once
with matplotlib hidden from the kernel (it must still run and say what to install).
mirror.ipynb preheats a small image from the real docker-registry and pulls it through a mirror.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import CLUSTER_NODES, free_port
from tests.support.registry import build_image, push_image

MiB = 1 << 20
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def execute(name: str, workdir: Path) -> tuple[nbformat.NotebookNode, str]:
    """Run a notebook in a fresh python3 kernel; returns it and all its text output."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return nb, "\n".join(text_outputs(nb))


def text_outputs(nb: nbformat.NotebookNode) -> list[str]:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                out.append(o.text)
            elif "data" in o and "text/plain" in o.data:
                out.append(o.data["text/plain"])
    return out


def images(nb: nbformat.NotebookNode) -> int:
    return sum(
        1 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    )


def test_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.fixture
def kernel_env(ray_cluster, monkeypatch, tmp_path):
    """The kernel's environment: the session's cluster, a work directory, no auth surprises."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    monkeypatch.setenv("RAYFLY_NB_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return monkeypatch


def use_s3(env, endpoint):
    """Point the quickstart at the session's moto S3 server."""
    env.setenv("RAYFLY_NB_S3_ENDPOINT", endpoint)
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.setenv("AWS_DEFAULT_REGION", "us-west-2")


def test_quickstart(kernel_env, s3_endpoint, tmp_path):
    use_s3(kernel_env, s3_endpoint)
    nb, text = execute("quickstart.ipynb", tmp_path)
    assert f"NODES {CLUSTER_NODES}" in text
    assert "SOURCE s3://rayfly-quickstart/events/" in text
    assert f"REPORT_OK True nodes_ok={CLUSTER_NODES}" in text
    assert f"ROWS_PER_NODE [150000] nodes {CLUSTER_NODES}" in text
    assert "SUMS_MATCH True" in text
    assert f"PLOTTED {2 * CLUSTER_NODES} lines" in text
    assert images(nb) >= 1
    copies = list((tmp_path / "work" / "nodes").glob("*/events/part-*.parquet"))
    assert len(copies) == 3 * CLUSTER_NODES


def test_quickstart_without_matplotlib(kernel_env, s3_endpoint, tmp_path):
    hide = tmp_path / "hide"
    (hide / "matplotlib").mkdir(parents=True)
    (hide / "matplotlib" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'matplotlib' (hidden by the test)\")\n"
    )
    kernel_env.setenv("PYTHONPATH", str(hide))
    kernel_env.delenv("MPLBACKEND")
    use_s3(kernel_env, s3_endpoint)
    nb, text = execute("quickstart.ipynb", tmp_path)
    assert f"ROWS_PER_NODE [150000] nodes {CLUSTER_NODES}" in text
    assert "NO_PLOT:" in text and "pip install matplotlib" in text
    assert images(nb) == 0


def test_mirror(kernel_env, registry, tmp_path):
    image = build_image("rayfly/nb", "v1", [2 * MiB, 512 * 1024 + 3], seed=7)
    push_image(registry.url, image)
    host = registry.url.removeprefix("http://")
    kernel_env.setenv("RAYFLY_NB_REGISTRY", host)
    kernel_env.setenv("RAYFLY_NB_IMAGE", "rayfly/nb:v1")
    # one port for all: the simulated nodes share this machine's address, so one mirror gets
    # it and the others a free port each (they used to fail with "address already in use")
    port = free_port()
    kernel_env.setenv("RAYFLY_NB_MIRROR_PORT", str(port))
    _, text = execute("mirror.ipynb", tmp_path)
    blobs = len(image.blob_digests)
    assert f"MIRRORS {CLUSTER_NODES}" in text
    assert f":{port}" in text
    assert f"PREHEAT_OK True blobs={blobs} bytes={image.total_blob_bytes}" in text
    assert f"from_registry={image.total_blob_bytes}" in text
    assert f"PULLED {blobs}/{blobs} blobs with the right digest" in text
    assert f"FROM_REGISTRY_TOTAL {image.total_blob_bytes}" in text
    assert f"STOPPED {CLUSTER_NODES}" in text


def test_mirror_without_a_registry_says_what_it_needs(kernel_env, tmp_path):
    from nbclient.exceptions import CellExecutionError

    kernel_env.setenv("RAYFLY_NB_REGISTRY", f"127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(CellExecutionError) as info:
        execute("mirror.ipynb", tmp_path)
    message = str(info.value)
    assert "no registry answers at 127.0.0.1:" in message
    assert "apt-get install docker-registry" in message and "skopeo copy" in message

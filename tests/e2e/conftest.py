"""Fixtures of the end-to-end tests: a real registry, a counting front, test images, containerd.

Every server listens on 127.0.0.1. Fixtures skip only when a needed binary is truly missing
(``.ci/run`` installs them), and tear down what they started.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.containerd import Containerd, binaries_missing
from tests.support.registry import (
    CountingFront,
    LoopThread,
    RegistryProcess,
    TestImage,
    build_image,
    push_image,
    push_index,
)

MiB = 1 << 20
IMAGE_NAME = "rayfly/test"
# One layer of 64 MiB or more, as the acceptance asks, and a few smaller ones.
IMAGE_SIZES = [64 * MiB + 12345, 6 * MiB, 1 * MiB + 7, 20_000]


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    """An asyncio loop in a thread, for servers the tests run in-process."""
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """Debian's docker-registry (CNCF distribution) on 127.0.0.1, filesystem storage."""
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry binary not installed (apt-get install docker-registry)")
    proc = RegistryProcess(tmp_path_factory.mktemp("registry"))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def front_server(registry: RegistryProcess, loop_thread: LoopThread) -> Iterator[CountingFront]:
    """The counting reverse proxy in front of the registry: the mirror's upstream."""
    front = CountingFront(registry.url, loop_thread)
    yield front
    front.stop()


@pytest.fixture
def front(front_server: CountingFront) -> CountingFront:
    """The counting front with counters and modes reset for this test."""
    front_server.state.reset()
    return front_server


@pytest.fixture(scope="session")
def test_image(registry: RegistryProcess) -> TestImage:
    """``rayfly/test:v1``: four uncompressed layers (one > 64 MiB) and a config, pushed."""
    image = build_image(IMAGE_NAME, "v1", IMAGE_SIZES, seed=1)
    push_image(registry.url, image)
    return image


@pytest.fixture(scope="session")
def multi_image(registry: RegistryProcess) -> dict[str, TestImage]:
    """``rayfly/multi:v1``: an OCI index of linux/amd64 and linux/arm64 (small layers)."""
    images = {
        "linux/amd64": build_image("rayfly/multi", "amd64", [2 * MiB, 3000], 2, "amd64"),
        "linux/arm64": build_image("rayfly/multi", "arm64", [MiB + 1, 4000], 3, "arm64"),
    }
    for image in images.values():
        push_image(registry.url, image)
    push_index(registry.url, "rayfly/multi", "v1", images)
    return images


@pytest.fixture(scope="session")
def containerd_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], Containerd]]:
    """Start containerd instances (own root, state, socket); all are stopped at the end."""
    missing = binaries_missing()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install containerd)")
    started: dict[str, Containerd] = {}
    base = tmp_path_factory.mktemp("containerd")

    def make(name: str) -> Containerd:
        if name not in started:
            started[name] = Containerd(Path(base) / name)
        return started[name]

    yield make
    for ctd in started.values():
        ctd.stop()

"""Unit tests run without Ray: starting it here is an error."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init is forbidden in unit tests; move the test to tests/cluster")

    monkeypatch.setattr(ray, "init", forbidden)

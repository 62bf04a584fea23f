"""The machine facts a benchmark prints beside its figures (bench/machine.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import machine


@pytest.mark.parametrize(
    ("bits", "reporting"),
    [("0110010100000000", True), ("0110000100000000", False), ("011", False)],
)
def test_free_page_reporting_is_read_from_the_balloons_feature_bits(
    tmp_path: Path, bits: str, reporting: bool
) -> None:
    (tmp_path / "virtio0").mkdir()
    (tmp_path / "virtio0" / "features").write_text(bits + "\n")
    assert machine.free_page_reporting(tmp_path) is reporting


def test_no_balloon_is_said_as_such(tmp_path: Path) -> None:
    assert machine.free_page_reporting(tmp_path) is None
    facts = {
        "free_page_reporting": None,
        "write_sync_sys_s": [0.1],
        "write_sync_later_to_first": 1.0,
    }
    assert "no balloon" in machine.summary(facts)


def test_the_write_probe_measures_every_round_and_leaves_no_file(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(machine.tempfile, "tempdir", None)
    costs = machine.write_sync_cost(rounds=3, mib=2)
    assert len(costs) == 3 and all(c >= 0 for c in costs)
    assert list(tmp_path.iterdir()) == []

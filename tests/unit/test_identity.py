"""A node's cache identity: the id file, the store lock, and what is collected on start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rayfly.config import node_cache_dir
from rayfly.errors import StorageError
from rayfly.eviction import GcPolicy
from rayfly.identity import open_node_cache
from rayfly.storage import PieceStore
from rayfly.task import Cut

NO_WATERMARKS = GcPolicy(1 << 20, high=1.0, low=1.0)  # the machine's own disk must not decide

OLD_NODE = "ab" * 28  # a Ray node id: the store layout before cache ids
OTHER_NODE = "cd" * 28


def test_the_same_directory_is_the_same_cache_after_a_restart(tmp_path):
    first = open_node_cache(tmp_path, {"node_id": "n1"})
    store = PieceStore(first.store_dir, 1 << 20, policy=NO_WATERMARKS)
    store.begin("t1", Cut(5, 5))
    store.write_piece("t1", 0, b"hello")
    store.complete("t1", "sha")
    os.close(first.lock_fd)  # the peer's process ends

    again = open_node_cache(tmp_path, {"node_id": "n2"})  # a new Ray node id
    assert again.cache_id == first.cache_id and not again.shared
    assert (tmp_path / "cache-id").read_text().strip() == first.cache_id
    assert PieceStore(again.store_dir, 1 << 20, policy=NO_WATERMARKS).entry("t1").complete


def test_a_second_live_peer_never_shares_the_store(tmp_path):
    live = open_node_cache(tmp_path, {"node_id": "n1"})
    (live.store_dir / "tasks").mkdir()
    (live.store_dir / "tasks" / "keep").write_text("x")

    second = open_node_cache(tmp_path, {"node_id": "n2"}, wait_s=0.2)
    assert second.shared and second.cache_id != live.cache_id
    assert second.store_dir.parent == tmp_path
    assert (live.store_dir / "tasks" / "keep").exists()
    assert '"node_id": "n1"' in (live.store_dir / "lock").read_text()  # not overwritten

    os.close(second.lock_fd)  # the second peer ends: its temporary store is nobody's
    os.close(live.lock_fd)
    third = open_node_cache(tmp_path, {"node_id": "n3"})
    assert third.cache_id == live.cache_id and not third.shared
    assert third.collected == [second.cache_id]
    assert not second.store_dir.exists() and (live.store_dir / "tasks" / "keep").exists()


def test_a_peer_waits_for_its_nodes_previous_actor_to_exit(tmp_path):
    """The node's previous peer (same Ray node id) still holds the store while it exits: the
    new one waits for it instead of starting cold in a temporary store."""
    import threading

    previous = open_node_cache(tmp_path, {"node_id": "n1"})
    exiting = threading.Timer(1.0, os.close, [previous.lock_fd])
    exiting.start()
    try:
        new = open_node_cache(tmp_path, {"node_id": "n1"}, alive_nodes={"n1"})
    finally:
        exiting.join()
    assert new.cache_id == previous.cache_id and not new.shared


def test_stale_stores_are_collected_and_nothing_else(tmp_path):
    def store(name: str, lock: bool = False) -> Path:
        d = tmp_path / name
        (d / "tasks" / "0123456789abcdef").mkdir(parents=True)
        if lock:
            (d / "lock").write_text("{}")
        return d

    old = store(OLD_NODE)  # previous layout, node gone
    old_alive = store(OTHER_NODE)  # previous layout, its node is still alive
    stale = store("0" * 32, lock=True)  # a store whose peer is gone
    held = open_node_cache(tmp_path / "elsewhere", {"node_id": "x"})  # a live peer's store ...
    os.rename(held.store_dir, tmp_path / held.cache_id)  # ... in this directory
    mine = tmp_path / "mydata"
    mine.mkdir()
    unlike = tmp_path / ("ef" * 28)  # a Ray node id's name, but no store inside
    unlike.mkdir()

    cache = open_node_cache(tmp_path, {"node_id": "n1"}, alive_nodes={OTHER_NODE})
    assert sorted(cache.collected) == sorted([OLD_NODE, stale.name])
    assert not old.exists() and not stale.exists()
    assert old_alive.exists() and (tmp_path / held.cache_id).exists()
    assert mine.exists() and unlike.exists() and cache.store_dir.exists()


def test_an_unusable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match=f"cannot use the cache directory {blocker}/cache.*"
                       "RAYFLY_CACHE_DIR"):  # fmt: skip
        open_node_cache(blocker / "cache", {"node_id": "n1"})


def test_node_cache_dir_is_the_nodes_environment(tmp_path):
    assert node_cache_dir({"RAYFLY_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert node_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "rayfly"
    assert node_cache_dir({}) == Path.home() / ".cache" / "rayfly"

"""What must outlive an actor restart: records kept in a key-value store.

The cluster-wide actors (the scheduler, the pinner) keep their registered tasks and pins here, so
that a restarted actor rebuilds from them. On a cluster the store is Ray's GCS key-value store
(:class:`rayfly.actors.gcs_store.GcsStore`, namespace ``rayfly``, keys like
``rayfly/tasks/<id>``); :class:`MemoryStore` is the same interface in memory, for tests and for
code running without Ray.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Protocol

log = logging.getLogger(__name__)

KV_NAMESPACE = "rayfly"
TASKS = "rayfly/tasks/"
PINS = "rayfly/pins/"


class KeyValue(Protocol):
    """A small string -> bytes store."""

    def put(self, key: str, value: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...


class MemoryStore:
    """:class:`KeyValue` in a dict."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.data if k.startswith(prefix)]


def save(kv: KeyValue, prefix: str, record_id: str, record: Any) -> None:
    """Keep ``record`` under ``prefix + record_id`` (best effort: a failure is logged)."""
    try:
        kv.put(prefix + record_id, pickle.dumps(record))
    except Exception as exc:  # the GCS briefly unreachable: the actor keeps working
        log.warning("could not save %s%s: %s", prefix, record_id, exc)


def drop(kv: KeyValue, prefix: str, record_id: str) -> None:
    """Forget the record ``prefix + record_id`` (best effort)."""
    try:
        kv.delete(prefix + record_id)
    except Exception as exc:
        log.warning("could not delete %s%s: %s", prefix, record_id, exc)


def load_all(kv: KeyValue, prefix: str) -> dict[str, Any]:
    """Every record under ``prefix``, by id; unreadable ones (an older format) are dropped."""
    out: dict[str, Any] = {}
    for key in kv.keys(prefix):
        raw = kv.get(key)
        try:
            out[key[len(prefix) :]] = pickle.loads(raw) if raw is not None else None
        except Exception as exc:
            log.warning("dropping unreadable record %s: %s", key, exc)
            kv.delete(key)
    return {k: v for k, v in out.items() if v is not None}

"""Ray's GCS key-value store as a :class:`rayfly.durable.KeyValue`."""

from __future__ import annotations

from ray.experimental import internal_kv

from rayfly.durable import KV_NAMESPACE


class GcsStore:
    """:class:`~rayfly.durable.KeyValue` in Ray's GCS key-value store (driver and actors)."""

    def put(self, key: str, value: bytes) -> None:
        internal_kv._internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)

    def get(self, key: str) -> bytes | None:
        return internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)

    def delete(self, key: str) -> None:
        internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)

    def keys(self, prefix: str) -> list[str]:
        return [k.decode() for k in internal_kv._internal_kv_list(prefix, namespace=KV_NAMESPACE)]

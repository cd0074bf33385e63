"""The Redis backend's schema marker: stamp a new prefix, migrate a v1 prefix in place, refuse a
newer one. Apart from the backend because it runs once per open, not per operation."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast
from urllib.parse import unquote

from ._entry import new_version
from ._errors import StateStoreError
from ._settings import SCHEMA_VERSION

if TYPE_CHECKING:
    from ._redis import RedisBackend

MIGRATE_BATCH = 500  # rows one migration script call versions


def open_schema(backend: RedisBackend) -> None:
    """Mark this prefix with our schema version, migrating a v1 prefix in place; refuse a
    newer one (SCHEMA_UNSUPPORTED naming both versions)."""
    version = schema_marker(backend, "open", create=True)
    if version > SCHEMA_VERSION:
        raise StateStoreError(
            "SCHEMA_UNSUPPORTED",
            "open",
            f"the Redis prefix has schema version {version}; this code reads versions up to "
            f"{SCHEMA_VERSION}: upgrade chatstate",
            path=backend.location,
        )
    if version == 1:
        _migrate_from_v1(backend)


def _migrate_from_v1(backend: RedisBackend) -> None:
    """v1 rows had no version: give each one a fresh random version, namespace by namespace
    (HSETNX, so two gateways migrating together agree), then mark the prefix v2."""
    client = backend._client

    def run() -> None:
        for plugin in cast("set[str]", client.smembers(backend._plugins_key)):
            plugin_id = unquote(plugin)
            for namespace in cast("set[str]", client.smembers(backend._namespaces_key(plugin_id))):
                rows, order, _ = backend._ns(plugin_id, namespace)
                members = cast("list[str]", client.zrange(order, 0, -1))
                for i in range(0, len(members), MIGRATE_BATCH):
                    chunk = members[i : i + MIGRATE_BATCH]
                    backend._migrate_v1(keys=[rows + k for k in chunk], args=[str(new_version()) for _ in chunk])
        client.set(f"{backend._prefix}schema", SCHEMA_VERSION)

    backend._call("open", run)


def schema_marker(backend: RedisBackend, op: str, *, create: bool = False) -> int:
    """The prefix's schema version (0 when unmarked); `create` stamps an empty prefix."""
    client = backend._client
    key = f"{backend._prefix}schema"

    def run() -> int:
        if create and not client.exists(f"{backend._prefix}plugins"):
            client.set(key, SCHEMA_VERSION, nx=True)  # an empty prefix starts at v2
        text = client.get(key)
        if text is None and create:  # rows but no marker cannot happen: v1 always wrote one
            client.set(key, 1, nx=True)
            text = client.get(key)
        return int(text) if text is not None else 0

    try:
        return backend._call(op, run)
    except ValueError:
        raise StateStoreError("CORRUPT", op, "the schema marker is not a number", path=backend.location) from None

"""Pick a backend from a URL: `redis://` selects the Redis backend."""

from __future__ import annotations

from ._backend import Backend
from ._errors import StateStoreError
from ._settings import StoreSettings


def backend_for_url(url: str, settings: StoreSettings) -> Backend:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        from ._redis import RedisBackend  # imported lazily: SQLite users never load redis-py

        return RedisBackend(url, settings)
    raise StateStoreError("INVALID_INPUT", "open", f"unsupported state URL scheme {scheme!r}; use redis://")

"""The token signing keys of the Bot Connector: fetched with timeouts, cached, never a wedge.

botframework-connector fetches the OpenID metadata and JWKS itself with `requests.get` and no
timeout, inside its coroutines; run on the loop's default executor, an unresponsive metadata
host left those threads stuck forever, and a few forged tokens then wedged /healthz, the
sweeper and SIGTERM. So the keys come from here instead:

- fetched by a coroutine (aiohttp) with connect, read and total timeouts and a size cap, so a
  stalled host costs at most `total_timeout_s` and is cancelled outright on shutdown: no
  thread, no executor (the loop's default one is never touched);
- one fetch at a time per metadata URL (single flight); every request waiting on it has the same
  deadline;
- the last good key set is kept and used while a refresh fails;
- a failed fetch is not retried for `retry_after_failure_s` (negative caching), so forged tokens
  cannot turn into a stream of outbound fetches; neither can unknown `kid`s, which refresh at
  most once per UNKNOWN_KID_REFRESH_S.

`install` puts a key set into botframework-connector's public metadata cache
(`JwtTokenExtractor.metadataCache`, which it fills with `setdefault`), so the library's own
validation reads these keys too and never calls `requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from botframework.connector.auth import JwtTokenExtractor
from jwt.algorithms import RSAAlgorithm

KEYS_REFRESH_S = 24 * 60 * 60  # a good key set is refetched once a day (the library's rule)
UNKNOWN_KID_REFRESH_S = 5 * 60  # an unknown `kid` refetches at most this often
MAX_DOCUMENT_BYTES = 256 * 1024  # metadata or JWKS larger than this is refused
log = logging.getLogger("chatstate.adapters.teams")


class KeysUnavailable(Exception):
    """No key set could be fetched (and none was fetched before): answered 503."""


class UnknownSigningKey(PermissionError):
    """The token names a `kid` the key set does not hold: answered 401."""


@dataclass(frozen=True)
class FetchSettings:
    """The metadata fetch's limits in seconds (`[adapters.teams]` `openid_*_s`, checked there)."""

    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    total_timeout_s: float = 10.0
    retry_after_failure_s: float = 30.0


@dataclass(frozen=True)
class SigningKey:
    """What botframework-connector's extractor reads from a metadata lookup."""

    public_key: Any
    endorsements: list[str]


class SigningKeys:
    """The key set behind one OpenID metadata URL."""

    def __init__(self, url: str, settings: FetchSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.settings = settings
        self._clock = clock
        self._keys: list[dict[str, Any]] | None = None  # the last good JWKS "keys"
        self._fetched_at = float("-inf")
        self._failed_until = float("-inf")
        self._inflight: asyncio.Task[list[dict[str, Any]]] | None = None
        self.fetches = 0  # fetch attempts, for tests and /healthz

    async def get(self, key_id: str | None) -> SigningKey:
        """The key named `key_id`. Raises UnknownSigningKey (401) or KeysUnavailable (503)."""
        if self._keys is None or self._clock() - self._fetched_at > KEYS_REFRESH_S:
            await self._refresh()
        key = self._find(key_id)
        if key is None and self._keys is not None and self._clock() - self._fetched_at > UNKNOWN_KID_REFRESH_S:
            await self._refresh()
            key = self._find(key_id)
        if key is not None:
            return key
        if self._keys is None:
            raise KeysUnavailable(f"no signing keys from {self.url}")
        raise UnknownSigningKey("the token's signing key is not in the key set")

    async def close(self) -> None:
        """Cancel a fetch in flight (shutdown never waits on a far end)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def health(self) -> dict[str, Any]:
        return {"keys": len(self._keys or []), "fetches": self.fetches, "failing": self._clock() < self._failed_until}

    def _find(self, key_id: str | None) -> SigningKey | None:
        for jwk in self._keys or []:
            if key_id and jwk.get("kid") == key_id:
                try:
                    public_key = RSAAlgorithm.from_jwk(json.dumps(jwk))
                except Exception:  # noqa: BLE001 - a malformed JWK is just not a usable key
                    return None
                endorsements = jwk.get("endorsements")
                return SigningKey(
                    public_key,
                    [e for e in endorsements if isinstance(e, str)] if isinstance(endorsements, list) else [],
                )
        return None

    async def _refresh(self) -> None:
        """Fetch once (joining a fetch already running); on failure keep the last good set."""
        if self._clock() < self._failed_until:
            return  # negative cache: a recent fetch failed, do not hammer (or wait on) the host
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch(), name=f"teams-openid-{self.url}")
            self._inflight.add_done_callback(self._fetched)
        # Any failed fetch is the far end's fault and _fetched logged it: the caller falls back to
        # the last good set (or KeysUnavailable).
        with contextlib.suppress(Exception):
            await asyncio.shield(self._inflight)

    def _fetched(self, task: asyncio.Task[list[dict[str, Any]]]) -> None:
        self._inflight = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._keys = task.result()
            self._fetched_at = self._clock()
            return
        self._failed_until = self._clock() + self.settings.retry_after_failure_s
        log.warning(
            "openid_fetch_failed",
            extra={"url": self.url, "error": type(exc).__name__, "keys_kept": len(self._keys or [])},
        )

    async def _fetch(self) -> list[dict[str, Any]]:
        self.fetches += 1
        s = self.settings
        timeout = aiohttp.ClientTimeout(
            total=s.total_timeout_s, connect=s.connect_timeout_s, sock_read=s.read_timeout_s
        )
        async with aiohttp.ClientSession(timeout=timeout) as session:
            metadata = await _get_json(session, self.url)
            jwks = await _get_json(session, str(metadata["jwks_uri"]))
        keys = jwks["keys"]
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise ValueError("JWKS keys is not a list of objects")
        return keys


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        resp.raise_for_status()
        body = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url}: document over {MAX_DOCUMENT_BYTES} bytes")
    return json.loads(bytes(body))


def install(keys: SigningKeys) -> None:
    """Make botframework-connector validate against `keys` for their metadata URL."""
    JwtTokenExtractor.metadataCache[keys.url] = keys

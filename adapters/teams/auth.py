"""Who may call the bot (the bearer token on every activity), and how the bot calls back.

Inbound, the token is checked twice: `TokenCheck` before the body is read (RS256 signature, `iss`,
`aud` = our app id, `exp`/`nbf`), then botframework-connector's own full validation of the
parsed Activity (the key's `msteams` endorsement, the `serviceurl` claim), pointed at a
simulator through its public factory's metadata URL and issuer.

Both read the signing keys from `SigningKeys`, never from the library's own fetch: that calls
`requests.get` with no timeout inside its coroutines, so an unresponsive metadata host would
wedge the loop's executor threads. `SigningKeys` fetches with aiohttp under timeouts and a size
cap, one fetch at a time per URL, keeps the last good set while a refresh fails and waits
`openid_retry_after_failure_s` after a failure (forged tokens cannot become a stream of fetches);
`install` puts a key set into the library's `JwtTokenExtractor.metadataCache`.

Outbound, Azure's `app_password` gets a token through MSAL, which only talks to an https
authority; a local simulator's pre-issued `connector_token` is presented instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from botbuilder.schema import CallerIdConstants
from botframework.connector.auth import (
    AppCredentials,
    AuthenticationConfiguration,
    AuthenticationConstants,
    BotFrameworkAuthentication,
    BotFrameworkAuthenticationFactory,
    JwtTokenExtractor,
    PasswordServiceClientCredentialFactory,
)
from jwt.algorithms import RSAAlgorithm

from chatstate.adapters.teams.config import TeamsSettings

BOT_FRAMEWORK_SCOPE = "https://api.botframework.com"  # the audience of tokens the bot presents
MAX_TOKEN_CHARS = 8192  # a bearer token longer than this is refused unread
CLOCK_SKEW_S = 300  # leeway on exp/nbf, the library's own (5 min)
# the channel sends one token with every activity for its lifetime and a verification was ~a
# quarter of the route's CPU, so verified tokens are remembered (the library still validates all)
VERIFIED_TOKENS = 256  # verified bearer tokens remembered (least recently used leaves first)
VERIFIED_FOR_S = 300.0  # a remembered token is verified again after this long (or at its exp)
KEYS_REFRESH_S = 24 * 60 * 60  # a good key set is refetched once a day (the library's rule)
UNKNOWN_KID_REFRESH_S = 5 * 60  # an unknown `kid` refetches at most this often
MAX_DOCUMENT_BYTES = 256 * 1024  # metadata or JWKS larger than this is refused
log = logging.getLogger("chatstate.adapters.teams")


class KeysUnavailable(Exception):
    """No key set could be fetched (and none was fetched before): answered 503."""


class UnknownSigningKey(PermissionError):
    """The token names a `kid` the key set does not hold: answered 401."""


@dataclass(frozen=True)
class SigningKey:
    """What botframework-connector's extractor reads from a metadata lookup."""

    public_key: Any
    endorsements: list[str]


class SigningKeys:
    """The key set behind one OpenID metadata URL, fetched under `settings`' `openid_*_s` limits."""

    def __init__(self, url: str, settings: TeamsSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.settings = settings
        self._clock = clock
        self._keys: dict[str, SigningKey] | None = None  # the last good set, by `kid`
        self._fetched_at = float("-inf")
        self._failed_until = float("-inf")
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0  # fetch attempts, for tests and /healthz

    async def get(self, key_id: str | None) -> SigningKey:
        """The key named `key_id`. Raises UnknownSigningKey (401) or KeysUnavailable (503)."""
        if self._keys is None or self._clock() - self._fetched_at > KEYS_REFRESH_S:
            await self._refresh()
        key = (self._keys or {}).get(key_id or "")
        if key is None and self._keys is not None and self._clock() - self._fetched_at > UNKNOWN_KID_REFRESH_S:
            await self._refresh()
            key = (self._keys or {}).get(key_id or "")
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

    async def _refresh(self) -> None:
        """Fetch once (joining a fetch already running); a failure keeps the last good set."""
        if self._clock() < self._failed_until:
            return  # negative cache: a recent fetch failed, do not hammer (or wait on) the host
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch(), name=f"teams-openid-{self.url}")
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        self.fetches += 1
        s = self.settings
        timeout = aiohttp.ClientTimeout(
            total=s.openid_total_timeout_s, connect=s.openid_connect_timeout_s, sock_read=s.openid_read_timeout_s
        )
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                metadata = await _get_json(session, self.url)
                keys = (await _get_json(session, str(metadata["jwks_uri"])))["keys"]
            if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
                raise ValueError("JWKS keys is not a list of objects")
            self._keys, self._fetched_at = dict(filter(None, map(_signing_key, keys))), self._clock()
        except Exception as exc:  # noqa: BLE001 - the far end's fault: logged, the last good set kept
            self._failed_until = self._clock() + s.openid_retry_after_failure_s
            extra = {"url": self.url, "error": type(exc).__name__, "keys_kept": len(self._keys or [])}
            log.warning("openid_fetch_failed", extra=extra)
        finally:
            if self._inflight is asyncio.current_task():
                self._inflight = None


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        resp.raise_for_status()
        body = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url}: document over {MAX_DOCUMENT_BYTES} bytes")
    return json.loads(bytes(body))


def _signing_key(jwk: dict[str, Any]) -> tuple[str, SigningKey] | None:
    """`(kid, key)` for a usable JWK; None for any other (a malformed JWK is just not usable)."""
    endorsements = jwk.get("endorsements")
    try:
        public_key = RSAAlgorithm.from_jwk(json.dumps(jwk))
    except Exception:  # noqa: BLE001 - the library raises several types for a bad JWK
        return None
    endorsed = [e for e in endorsements if isinstance(e, str)] if isinstance(endorsements, list) else []
    return (kid, SigningKey(public_key, endorsed)) if isinstance(kid := jwk.get("kid"), str) and kid else None


def install(keys: SigningKeys) -> None:
    """Make botframework-connector validate against `keys` for their metadata URL."""
    JwtTokenExtractor.metadataCache[keys.url] = keys


@dataclass(frozen=True)
class TokenCheck:
    """The pre-parse check of the bearer token (see the module docstring)."""

    keys: SigningKeys
    issuer: str
    app_id: str
    # token -> (claims, good until), least recently used first
    _verified: OrderedDict[str, tuple[dict[str, Any], float]] = field(default_factory=OrderedDict, repr=False)

    async def verify(self, auth_header: str | None) -> dict[str, Any]:
        """Return the token's claims. Raises PermissionError or jwt.PyJWTError for a missing or
        bad token (401) and KeysUnavailable when no key set can be had (503)."""
        scheme, _, token = (auth_header or "").partition(" ")
        if scheme != "Bearer" or not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise PermissionError("missing or malformed bearer token")
        hit = self._verified.get(token)
        if hit is not None and time.time() < hit[1]:
            self._verified.move_to_end(token)
            return dict(hit[0])
        header = jwt.get_unverified_header(token)
        if header.get("alg") != "RS256":
            raise PermissionError("token is not RS256")
        key = await self.keys.get(kid if isinstance(kid := header.get("kid"), str) else None)
        claims: dict[str, Any] = jwt.decode(
            token,
            key.public_key,
            algorithms=["RS256"],
            audience=self.app_id,
            issuer=self.issuer,
            leeway=CLOCK_SKEW_S,
            options={"require": ["exp", "iss", "aud"]},
        )
        if isinstance(exp := claims.get("exp"), (int, float)):  # kept until exp, at most VERIFIED_FOR_S
            self._verified[token] = (dict(claims), min(float(exp), time.time() + VERIFIED_FOR_S))
            self._verified.move_to_end(token)
            if len(self._verified) > VERIFIED_TOKENS:
                self._verified.popitem(last=False)
        return claims


class StaticTokenCredentials(AppCredentials):
    """App credentials that present one pre-issued bearer token (local simulator only)."""

    def __init__(self, app_id: str, token: str) -> None:
        super().__init__(app_id=app_id, oauth_scope=BOT_FRAMEWORK_SCOPE)
        self._token = token

    def get_access_token(self, force_refresh: bool = False) -> str:
        return self._token


class StaticTokenCredentialFactory(PasswordServiceClientCredentialFactory):
    """Credentials for the bot's own app id only, carrying the configured connector token."""

    def __init__(self, app_id: str, token: str) -> None:
        super().__init__(app_id)
        self.token = token

    async def create_credentials(
        self, app_id: str, oauth_scope: str, login_endpoint: str, validate_authority: bool
    ) -> AppCredentials:
        if app_id != self.app_id:
            raise PermissionError("credentials requested for an app id that is not this bot")
        return StaticTokenCredentials(app_id, self.token)


def build_authentication(config: TeamsSettings) -> tuple[BotFrameworkAuthentication, TokenCheck, list[SigningKeys]]:
    """botbuilder's authentication (for Azure or a simulator), the pre-parse token check, and
    every key set the library may read, installed into its metadata cache. Raises ValueError
    naming a missing key (config.py: `check`)."""
    config.check()
    url = config.openid_metadata_url
    if url is None:  # Azure: the channel's keys; emulator tokens are refused up front
        urls = [
            AuthenticationConstants.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL,
            AuthenticationConstants.TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL,
        ]
        issuer = AuthenticationConstants.TO_BOT_FROM_CHANNEL_TOKEN_ISSUER
        library = BotFrameworkAuthenticationFactory.create(
            credential_factory=PasswordServiceClientCredentialFactory(config.app_id, str(config.app_password)),
            auth_configuration=AuthenticationConfiguration(),
        )
    else:
        urls, issuer = [url], str(config.token_issuer)
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        library = BotFrameworkAuthenticationFactory.create(
            to_channel_from_bot_login_url=origin,  # unused: the static token needs no login
            to_channel_from_bot_oauth_scope=BOT_FRAMEWORK_SCOPE,
            to_bot_from_channel_token_issuer=issuer,
            oauth_url=origin,  # the user-token service; this bot never signs users in
            to_bot_from_channel_open_id_metadata_url=url,
            to_bot_from_emulator_open_id_metadata_url=url,
            caller_id=CallerIdConstants.public_azure_channel,
            credential_factory=StaticTokenCredentialFactory(config.app_id, str(config.connector_token)),
            auth_configuration=AuthenticationConfiguration(),
        )
    key_sets = [SigningKeys(u, config) for u in urls]
    for keys in key_sets:
        install(keys)
    return library, TokenCheck(key_sets[0], issuer, config.app_id), key_sets

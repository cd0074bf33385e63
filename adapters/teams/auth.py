"""Who may call the bot, and how the bot authenticates to the Bot Connector.

Inbound: botframework-connector validates the `Authorization: Bearer <JWT>` itself. Its public
`BotFrameworkAuthenticationFactory.create` takes the OpenID metadata URL and the token issuer,
so pointing it at the simulator needs no code of ours: the library fetches the metadata, then
the JWKS, checks the RS256 signature, the issuer, the `msteams` endorsement of the signing key,
`aud` = our app id and the `serviceurl` claim = the activity's serviceUrl. (So we did not write
our own PyJWT validation.)

Outbound: against Azure the bot gets a token from Azure AD through MSAL
(`PasswordServiceClientCredentialFactory`). MSAL only talks to an https authority, so a local
simulator cannot stand in for Azure AD. For the simulator the config names a pre-issued
`connector_token` instead; `StaticTokenCredentialFactory` presents it on every Bot Connector
call and the simulator refuses calls without it. That switch is explicit: no `connector_token`
in the config, no static token.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
from botbuilder.schema import CallerIdConstants
from botframework.connector.auth import (
    AppCredentials,
    AuthenticationConfiguration,
    AuthenticationConstants,
    BotFrameworkAuthentication,
    BotFrameworkAuthenticationFactory,
    PasswordServiceClientCredentialFactory,
    ServiceClientCredentialsFactory,
)

from chatstate.adapters.teams.config import TeamsSettings
from chatstate.adapters.teams.keys import FetchSettings, SigningKeys, install

BOT_FRAMEWORK_SCOPE = "https://api.botframework.com"  # the audience of tokens the bot presents
VERIFIED_TOKENS = 256  # verified bearer tokens remembered (least recently used leaves first)
VERIFIED_FOR_S = 300.0  # a remembered token is verified again after this long (or at its exp)
CLOCK_SKEW_S = 300  # leeway on exp/nbf, the library's own (5 min)
MAX_TOKEN_CHARS = 8192  # a bearer token longer than this is refused unread


class StaticTokenCredentials(AppCredentials):
    """App credentials that present one pre-issued bearer token (local simulator only)."""

    def __init__(self, app_id: str, token: str) -> None:
        super().__init__(app_id=app_id, oauth_scope=BOT_FRAMEWORK_SCOPE)
        self._token = token

    def get_access_token(self, force_refresh: bool = False) -> str:
        return self._token


class StaticTokenCredentialFactory(ServiceClientCredentialsFactory):
    """Credentials for the bot's own app id only, carrying the configured connector token."""

    def __init__(self, app_id: str, token: str) -> None:
        self.app_id = app_id
        self.token = token

    async def is_valid_app_id(self, app_id: str) -> bool:
        return app_id == self.app_id

    async def is_authentication_disabled(self) -> bool:
        return False  # inbound tokens are always required

    async def create_credentials(
        self, app_id: str, oauth_scope: str, login_endpoint: str, validate_authority: bool
    ) -> AppCredentials:
        if app_id != self.app_id:
            raise PermissionError("credentials requested for an app id that is not this bot")
        return StaticTokenCredentials(app_id, self.token)


def build_authentication(config: TeamsSettings) -> BotFrameworkAuthentication:
    """Build the Bot Framework authentication described by `[adapters.teams]`.

    Keys: `app_id` (required); `openid_metadata_url` + `token_issuer` + `connector_token` for a
    simulator, or `app_password` for Azure. Raises ValueError naming the missing key.
    """
    config.check_credentials()
    app_id = config.app_id
    metadata_url = config.openid_metadata_url
    if metadata_url is None:
        password = str(config.app_password)
        return BotFrameworkAuthenticationFactory.create(
            credential_factory=PasswordServiceClientCredentialFactory(app_id, password),
            auth_configuration=AuthenticationConfiguration(),
        )
    issuer = str(config.token_issuer)
    token = str(config.connector_token)
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(str(metadata_url)))
    return BotFrameworkAuthenticationFactory.create(
        to_channel_from_bot_login_url=origin,  # unused: the static token needs no login
        to_channel_from_bot_oauth_scope=BOT_FRAMEWORK_SCOPE,
        to_bot_from_channel_token_issuer=issuer,
        oauth_url=origin,  # the user-token service; this bot never signs users in
        to_bot_from_channel_open_id_metadata_url=str(metadata_url),
        to_bot_from_emulator_open_id_metadata_url=str(metadata_url),
        caller_id=CallerIdConstants.public_azure_channel,
        credential_factory=StaticTokenCredentialFactory(app_id, token),
        auth_configuration=AuthenticationConfiguration(),
    )


@dataclass(frozen=True)
class TokenCheck:
    """Authenticate the bearer token alone, before the body is read or parsed.

    Checks what needs no Activity: RS256 signature by a key of the channel's key set, `iss`,
    `aud` = our app id, `exp`/`nbf`. botframework-connector then repeats its full validation
    with the parsed Activity (endorsement for its channel, `serviceurl` claim = its
    serviceUrl), reading the same cached keys.
    """

    keys: SigningKeys
    issuer: str
    app_id: str
    # token -> (claims, good until): the channel sends one token with every activity for its
    # lifetime, and a verification was ~a quarter of the route's CPU. A cache only
    # skips this early check: botframework-connector still validates every activity in full.
    _verified: OrderedDict[str, tuple[dict[str, Any], float]] = field(
        default_factory=OrderedDict, compare=False, repr=False
    )

    async def verify(self, auth_header: str | None) -> dict[str, Any]:
        """Return the token's claims. Raises PermissionError or jwt.PyJWTError for a missing or
        bad token (401) and keys.KeysUnavailable when no key set can be had (503)."""
        scheme, _, token = (auth_header or "").partition(" ")
        if scheme != "Bearer" or not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise PermissionError("missing or malformed bearer token")
        hit = self._verified.get(token)
        if hit is not None and time.time() < hit[1]:
            self._verified.move_to_end(token)
            return dict(hit[0])
        claims = await self._verify(token)
        exp = claims.get("exp")
        if isinstance(exp, (int, float)):  # until it expires, re-checked at least every VERIFIED_FOR_S
            self._verified[token] = (dict(claims), min(float(exp), time.time() + VERIFIED_FOR_S))
            self._verified.move_to_end(token)
            if len(self._verified) > VERIFIED_TOKENS:
                self._verified.popitem(last=False)
        return claims

    async def _verify(self, token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != "RS256":
            raise PermissionError("token is not RS256")
        kid = header.get("kid")
        key = await self.keys.get(kid if isinstance(kid, str) else None)
        claims: dict[str, Any] = jwt.decode(
            token,
            key.public_key,
            algorithms=["RS256"],
            audience=self.app_id,
            issuer=self.issuer,
            leeway=CLOCK_SKEW_S,
            options={"require": ["exp", "iss", "aud"]},
        )
        return claims


def build_token_check(config: TeamsSettings) -> tuple[TokenCheck, list[SigningKeys]]:
    """The pre-parse token check for `[adapters.teams]`, and every key set botframework-connector
    may read, installed into its metadata cache (so it never fetches with `requests`).

    Raises ValueError naming a bad key.
    """
    config.check_credentials()
    app_id = config.app_id
    settings = FetchSettings(
        config.openid_connect_timeout_s,
        config.openid_read_timeout_s,
        config.openid_total_timeout_s,
        config.openid_retry_after_failure_s,
    )
    metadata_url = config.openid_metadata_url
    if metadata_url is None:  # Azure: the channel's keys; emulator tokens are refused up front
        channel = SigningKeys(AuthenticationConstants.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL, settings)
        key_sets = [channel, SigningKeys(AuthenticationConstants.TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL, settings)]
        issuer = AuthenticationConstants.TO_BOT_FROM_CHANNEL_TOKEN_ISSUER
    else:
        channel = SigningKeys(str(metadata_url), settings)
        key_sets = [channel]
        issuer = str(config.token_issuer)
    for keys in key_sets:
        install(keys)
    return TokenCheck(channel, issuer, app_id), key_sets

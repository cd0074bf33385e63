"""The pre-parse token check remembers tokens it verified: the channel sends one token
with every activity, and verifying it again each time was ~a quarter of the route's CPU."""

from __future__ import annotations

import time

import jwt
import pytest

from chatstate.adapters.teams import auth
from chatstate.adapters.teams.auth import SigningKeys, TokenCheck
from chatstate.adapters.teams.config import TeamsSettings
from chatstate.gateway.sim.teams import ISSUER, METADATA_PATH, TeamsSimulator, new_signing_key


def _check(sim: TeamsSimulator) -> TokenCheck:
    return TokenCheck(SigningKeys(sim.base_url + METADATA_PATH, TeamsSettings(app_id=sim.app_id)), ISSUER, sim.app_id)


async def test_a_verified_token_is_remembered_until_it_expires_at_the_latest(sim: TeamsSimulator) -> None:
    check = _check(sim)
    token = sim.token(expires_in_s=120)
    claims = await check.verify(f"Bearer {token}")
    assert claims["aud"] == sim.app_id
    _, good_until = check._verified[token]
    assert good_until <= claims["exp"] and good_until > time.time()
    again = await check.verify(f"Bearer {token}")
    assert again == claims and again is not claims  # a copy: callers cannot change what is kept


async def test_a_bad_token_is_never_remembered_and_still_refused(sim: TeamsSimulator) -> None:
    check = _check(sim)
    await check.verify(f"Bearer {sim.token()}")
    forged = sim.token(key=new_signing_key())
    for _ in range(2):
        with pytest.raises(jwt.PyJWTError):
            await check.verify(f"Bearer {forged}")
    assert forged not in check._verified


async def test_the_remembered_tokens_are_bounded(sim: TeamsSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERIFIED_TOKENS", 2)
    check = _check(sim)
    tokens = [sim.token(expires_in_s=600 + n) for n in range(3)]  # distinct tokens
    for token in tokens:
        await check.verify(f"Bearer {token}")
    assert list(check._verified) == tokens[1:]

"""The Matrix adapter's pieces without a gateway: parsing, config, and its state over a real
SQLite file (through conftest's `runtime`, which opens stores the way the gateway's does)."""

from __future__ import annotations

import json

import pytest
from runtime_support import FileRuntime

from chatstate.adapters.matrix import platform
from chatstate.adapters.matrix.config import MatrixSettings
from chatstate.adapters.matrix.state import SYNC, ReactionTarget, json_key
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.sdk import AdapterState, Approval, ApprovalService, Writes, now_ms

CLOCK_READ_TOLERANCE_MS = 1_000


# -- parsing ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("!approve deploy prod", ("deploy prod", ("allow-once", "allow-always", "deny"))),
        ("  !approve   deploy    prod ", ("deploy prod", ("allow-once", "allow-always", "deny"))),
        ("!approve-once rotate keys", ("rotate keys", ("allow-once", "deny"))),
        ("!approve", None),
        ("!approve   ", None),
        ("please !approve deploy", None),
        ("!approved deploy", None),
    ],
)
def test_parse_command(body: str, expected: tuple[str, tuple[str, ...]] | None) -> None:
    assert platform.parse_command(body) == expected


@pytest.mark.parametrize(
    ("key", "decision"),
    [("✅", "allow-once"), ("♾️", "allow-always"), ("♾", "allow-always"), ("❌", "deny"), ("👍", None), ("✅✅", None)],
)
def test_decision_for_reaction_keys(key: str, decision: str | None) -> None:
    assert platform.decision_for(key) == decision


def test_txn_ids_are_stable_per_cause_and_distinct_across_causes() -> None:
    assert platform.txn_id("prompt", "$a") == platform.txn_id("prompt", "$a")
    assert (
        len({platform.txn_id("prompt", "$a"), platform.txn_id("prompt", "$b"), platform.txn_id("outcome", "$a")}) == 3
    )
    assert platform.approval_id("!r", "$a") != platform.approval_id("!s", "$a")


def test_prompt_expiry_only_for_the_bots_prompts() -> None:
    approval = Approval("a1", "x", "@u:s", ("deny",), 1, 99)
    prompt = {"sender": "@bot:s", "content": platform.prompt_content(approval, "$request")}
    assert platform.prompt_expiry(prompt, "@bot:s") == 99
    assert platform.prompt_expiry(prompt, "@other:s") is None
    assert platform.prompt_expiry({"sender": "@bot:s", "content": {"body": "hi"}}, "@bot:s") is None


def test_config_defaults_env_strings_and_errors() -> None:
    cfg = MatrixSettings.from_table(
        {"homeserver": "http://h/", "access_token": "t"}, env={"CHATSTATE_MATRIX_APPROVERS": "@a:s, @b:s"}
    )
    assert (cfg.homeserver, cfg.approvers, cfg.approval_ttl_ms) == (
        "http://h",
        ("@a:s", "@b:s"),
        30 * 60 * 1000,  # the documented default
    )
    env = {"CHATSTATE_MATRIX_APPROVAL_TTL_MS": "1500", "CHATSTATE_MATRIX_APPROVERS": '["@c:s"]'}
    cfg = MatrixSettings.from_table({"homeserver": "http://h", "access_token": "t"}, env=env)
    assert (cfg.approval_ttl_ms, cfg.approvers) == (1500, ("@c:s",))
    for table, key in [
        ({"access_token": "t"}, "homeserver"),
        ({"homeserver": "http://h"}, "access_token"),
        ({"homeserver": "http://h", "access_token": "t", "approvers": ["alice"]}, "approvers"),
        ({"homeserver": "http://h", "access_token": "t", "approval_ttl_ms": 0}, "approval_ttl_ms"),
        ({"homeserver": "http://h", "access_token": "t", "sync_timeout_ms": True}, "sync_timeout_ms"),
        ({"homeserver": "http://h", "access_token": "t", "approval_ttl_ms": "1500"}, "approval_ttl_ms"),
    ]:
        with pytest.raises(ConfigError, match=f"adapters.matrix.{key}"):
            MatrixSettings.from_table(table)


# -- approvals (core store) -------------------------------------------------------------------
async def test_an_approval_is_pending_until_its_deadline_and_past_it_opens_nothing(runtime: FileRuntime) -> None:
    """Staged with the event's done mark; its row lives until the approval's deadline (counted
    from the request), and an approval already past it stages nothing: nothing left to ask."""
    clock = [now_ms()]
    service = ApprovalService(legacy=False, clock=lambda: clock[0])
    await service.state.open(runtime)
    raw = await runtime.open_core_store("core:approvals", "pending", max_entries=10_000)
    asked = clock[0] - 500  # the chat message is half a second old when handled
    approval = Approval("a1", "deploy", "@u:s", ("allow-once", "deny"), asked, asked + 60_000, {"room_id": "!r"})
    writes = Writes()
    assert service.open(writes, approval)
    assert await raw.lookup_entry("a1") is None  # staged, not yet written
    await writes.commit()
    row = await raw.lookup_entry("a1")
    assert row is not None and row.expires_at is not None
    assert abs(row.expires_at - approval.expires_at) < CLOCK_READ_TOLERANCE_MS
    assert await service.get("a1") == approval

    clock[0] = approval.expires_at  # the same request handled again at its deadline
    late = Writes()
    assert not service.open(late, approval) and late.staged == []

    resolved = Writes()
    service.resolve(resolved, "a1")
    await resolved.commit()
    assert await raw.lookup_entry("a1") is None


# -- reaction targets and sync token ----------------------------------------------------------
def test_target_rows_round_trip_and_refuse_another_version() -> None:
    target = ReactionTarget("a1", ("allow-once", "deny"))
    assert json.loads(json_key("@bot:s", "!r:s", "$p")) == ["@bot:s", "!r:s", "$p"]
    value = target.to_json()
    assert value == {"version": 1, "target": {"approval_id": "a1", "decisions": ["allow-once", "deny"]}}
    assert ReactionTarget.from_json(value) == target
    with pytest.raises(ValueError, match="version"):
        ReactionTarget.from_json({**value, "version": 2})


async def test_the_token_survives_a_new_instance_but_not_in_legacy(runtime: FileRuntime) -> None:
    for legacy in (False, True):
        rt = FileRuntime("matrix", runtime.db, legacy=legacy)
        tokens = AdapterState(SYNC, legacy=legacy)
        await tokens.open(rt)
        await tokens.record(f"@bot{legacy}:s", {"version": 1, "next_batch": "s42"})
        again = AdapterState(SYNC, legacy=legacy)  # a new instance, as after a restart
        await again.open(rt)
        assert await again.get(f"@bot{legacy}:s") == (None if legacy else {"version": 1, "next_batch": "s42"})
        await rt.close()


async def test_a_sync_unanswered_past_its_timeout_is_a_sync_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A homeserver that takes the /sync and never answers (hung, not down): nio waits the
    long-poll's timeout plus its grace, then retries, minutes in all; /healthz must not stay ok."""
    import asyncio
    from types import SimpleNamespace

    from chatstate.adapters.matrix import sync
    from chatstate.adapters.matrix.handlers import Stats

    monkeypatch.setattr(sync, "SYNC_GRACE_S", 0.05, raising=False)
    asked = asyncio.Event()

    async def hang(**_: object) -> None:
        asked.set()
        await asyncio.Event().wait()

    io = SimpleNamespace(sync=hang, client=SimpleNamespace(malformed=0), malformed_syncs=0)
    settings = MatrixSettings.from_table({"homeserver": "http://hs", "access_token": "t", "sync_timeout_ms": 0})
    loop = sync.SyncLoop(SimpleNamespace(io=io, settings=settings, log=None, stats=Stats()), tokens=None)
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(asked.wait(), 5)
        assert loop.health()["sync_error"] is None  # within its timeout: a long-poll, not a fault
        await asyncio.sleep(0.1)
        assert loop.health()["sync_error"] == "/sync unanswered past its timeout"
    finally:
        await loop.stop(task)

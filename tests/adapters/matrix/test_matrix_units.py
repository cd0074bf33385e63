"""The Matrix adapter's pieces without a gateway: parsing, config, and its state over a real
SQLite file (through a small runtime that opens stores the way the gateway's does)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatstate import state
from chatstate.adapters.matrix import platform
from chatstate.adapters.matrix.config import DEFAULT_APPROVAL_TTL_MS, MatrixSettings
from chatstate.adapters.matrix.state import Outcome, ReactionTarget, ReactionTargets, SyncTokens, target_key
from chatstate.gateway.approvals import Approval, ApprovalService
from chatstate.gateway.clock import now_ms
from chatstate.gateway.exits import ConfigError

CLOCK_READ_TOLERANCE_MS = 1_000


class FileRuntime:
    """A PluginRuntime for the "matrix" plugin over one SQLite file."""

    plugin_id = "matrix"
    config: dict[str, Any] = {}
    log = logging.LoggerAdapter(logging.getLogger("test.matrix"))

    def __init__(self, db: Path, *, legacy: bool = False) -> None:
        self.db = db
        self.legacy = legacy
        self.opened: list[state.AsyncKeyedStore] = []

    async def open_keyed_store(
        self, namespace: str, *, max_entries: int, default_ttl_ms: int | None = None, overflow: str = "evict-oldest"
    ) -> state.AsyncKeyedStore:
        return await self._open(self.plugin_id, namespace, max_entries, default_ttl_ms)

    async def open_core_store(
        self, core_id: str, namespace: str, *, max_entries: int, default_ttl_ms: int | None = None
    ) -> state.AsyncKeyedStore:
        return await self._open(core_id, namespace, max_entries, default_ttl_ms, core=True)

    async def _open(
        self, plugin_id: str, namespace: str, max_entries: int, ttl: int | None, *, core: bool = False
    ) -> state.AsyncKeyedStore:
        store = await state.open_async_keyed_store(
            plugin_id, namespace, max_entries=max_entries, default_ttl_ms=ttl, path=self.db, core=core
        )
        self.opened.append(store)
        return store

    async def close(self) -> None:
        for store in self.opened:
            await store.close()


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[FileRuntime]:
    rt = FileRuntime(tmp_path / "state.sqlite")
    yield rt
    await rt.close()


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
    command = platform.parse_command(body)
    assert (None if command is None else (command.action, command.decisions)) == expected


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
    prompt = {"sender": "@bot:s", "content": platform.prompt_content(approval)}
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
        DEFAULT_APPROVAL_TTL_MS,
    )
    env = {"CHATSTATE_MATRIX_APPROVAL_TTL_MS": "1500", "CHATSTATE_MATRIX_APPROVERS": '["@c:s"]'}
    cfg = MatrixSettings.from_table({"homeserver": "h", "access_token": "t"}, env=env)
    assert (cfg.approval_ttl_ms, cfg.approvers) == (1500, ("@c:s",))
    for table, key in [
        ({"access_token": "t"}, "homeserver"),
        ({"homeserver": "h"}, "access_token"),
        ({"homeserver": "h", "access_token": "t", "approvers": ["alice"]}, "approvers"),
        ({"homeserver": "h", "access_token": "t", "approval_ttl_ms": 0}, "approval_ttl_ms"),
        ({"homeserver": "h", "access_token": "t", "sync_timeout_ms": True}, "sync_timeout_ms"),
        ({"homeserver": "h", "access_token": "t", "approval_ttl_ms": "1500"}, "approval_ttl_ms"),
    ]:
        with pytest.raises(ConfigError, match=f"adapters.matrix.{key}"):
            MatrixSettings.from_table(table)


# -- approvals (core store) -------------------------------------------------------------------
async def test_request_is_idempotent_and_keeps_the_first_expiry(runtime: FileRuntime) -> None:
    clock = [now_ms()]
    service = ApprovalService(legacy=False, clock=lambda: clock[0])
    await service.open(runtime)
    raw = await runtime.open_core_store("core:approvals", "pending", max_entries=10_000)
    first = await service.request("a1", "deploy", requested_by="@u:s", ttl_ms=60_000)
    row = await raw.lookup_entry("a1")
    clock[0] += 10_000  # a replayed request, later and in a new process: must not restart the clock
    restarted = ApprovalService(legacy=False, clock=lambda: clock[0])
    await restarted.open(runtime)
    again = await restarted.request("a1", "other", requested_by="@v:s", ttl_ms=120_000)
    assert again == first and again.expires_at == clock[0] - 10_000 + 60_000
    assert await raw.lookup_entry("a1") == row  # not rewritten


async def test_a_request_replayed_past_its_deadline_opens_nothing(runtime: FileRuntime) -> None:
    """The deadline counts from `requested_at`, so a replay (the first approval's row already gone)
    gets the same deadline, and past it nothing is stored: there is nothing left to ask."""
    clock = [now_ms()]
    asked = clock[0] - 500  # the chat message is half a second old when first handled
    service = ApprovalService(legacy=False, clock=lambda: clock[0])
    await service.open(runtime)
    raw = await runtime.open_core_store("core:approvals", "pending", max_entries=10_000)
    first = await service.request("a1", "deploy", requested_by="@u:s", ttl_ms=60_000, requested_at=asked)
    assert (first.created_at, first.expires_at) == (asked, asked + 60_000)
    await raw.delete("a1")  # as the row's TTL would
    clock[0] = asked + 60_000  # the replay comes at the deadline
    again = await service.request("a1", "deploy", requested_by="@u:s", ttl_ms=60_000, requested_at=asked)
    assert again.expires_at == first.expires_at <= clock[0]
    assert await raw.lookup_entry("a1") is None  # nothing stored
    future = await service.request("a2", "x", requested_by="@u:s", ttl_ms=60_000, requested_at=clock[0] + 9_999)
    assert future.created_at == clock[0]  # a timestamp ahead of our clock counts as now


async def test_resolve_exactly_once_across_two_services_on_one_file(runtime: FileRuntime) -> None:
    one, two = ApprovalService(legacy=False), ApprovalService(legacy=False)
    await one.open(runtime)
    await two.open(runtime)
    await one.request("a1", "deploy", requested_by="@u:s", ttl_ms=60_000)
    assert await two.get("a1") is not None  # read through from the store
    results = await asyncio.gather(one.resolve("a1", "allow-once"), two.resolve("a1", "deny"))
    assert sum(r is not None for r in results) == 1
    assert await one.resolve("a1", "allow-once") is None


async def test_resolve_refuses_a_decision_the_approval_does_not_allow(runtime: FileRuntime) -> None:
    service = ApprovalService(legacy=False)
    await service.open(runtime)
    await service.request("a1", "deploy", requested_by="@u:s", decisions=("allow-once", "deny"), ttl_ms=60_000)
    with pytest.raises(ValueError, match="allow-always"):
        await service.resolve("a1", "allow-always")
    assert (await service.resolve("a1", "deny")) is not None
    with pytest.raises(ValueError):
        await service.request("a2", "x", requested_by="@u:s", decisions=("maybe",), ttl_ms=1)


# -- reaction targets and sync token ----------------------------------------------------------
async def test_target_ttl_is_the_approvals_remaining_lifetime(runtime: FileRuntime) -> None:
    targets = ReactionTargets(legacy=False)
    await targets.open(runtime)
    target = ReactionTarget("a1", ("allow-once", "deny"))
    expires_at = now_ms() + 60_000
    assert await targets.register_target("@bot:s", "!r:s", "$p", target, expires_at=expires_at)
    assert not await targets.register_target("@bot:s", "!r:s", "$old", target, expires_at=now_ms() - 1)

    key = target_key("@bot:s", "!r:s", "$p")
    assert json.loads(key) == ["@bot:s", "!r:s", "$p"]
    raw = await runtime.open_keyed_store("matrix.approval-reactions", max_entries=1_000)
    entry = await raw.lookup_entry(key)
    assert entry is not None and entry.expires_at is not None
    assert entry.value == {"version": 1, "target": {"approval_id": "a1", "decisions": ["allow-once", "deny"]}}
    # the store stamps its own clock a moment after ours; allow that read-to-read drift only
    assert abs(entry.expires_at - expires_at) < CLOCK_READ_TOLERANCE_MS
    assert await raw.lookup(target_key("@bot:s", "!r:s", "$old")) is None

    assert (await targets.resolve_target("@bot:s", "!r:s", "$p", "allow-always")).outcome is Outcome.REFUSED
    assert await raw.lookup(key) is not None
    taken = await targets.resolve_target("@bot:s", "!r:s", "$p", "deny")
    assert (taken.outcome, taken.target) == (Outcome.RESOLVED, target)
    assert (await targets.resolve_target("@bot:s", "!r:s", "$p", "deny")).outcome is Outcome.MISSING
    assert await raw.lookup(key) is None


async def test_targets_and_token_survive_a_new_instance_but_not_in_legacy(runtime: FileRuntime) -> None:
    target = ReactionTarget("a1", ("deny",))
    for legacy in (False, True):
        rt = FileRuntime(runtime.db, legacy=legacy)
        targets, tokens = ReactionTargets(legacy=legacy), SyncTokens(legacy=legacy)
        await targets.open(rt)
        await tokens.open(rt)
        await targets.register_target("@bot:s", "!r:s", f"$p{legacy}", target, expires_at=now_ms() + 60_000)
        await tokens.save(f"@bot{legacy}:s", "s42")
        # a new adapter instance, as after a restart: only the store remembers
        again_targets, again_tokens = ReactionTargets(legacy=legacy), SyncTokens(legacy=legacy)
        await again_targets.open(rt)
        await again_tokens.open(rt)
        found = await again_targets.peek("@bot:s", "!r:s", f"$p{legacy}")
        token = await again_tokens.load(f"@bot{legacy}:s")
        assert (found, token) == ((None, None) if legacy else (target, "s42"))
        await rt.close()

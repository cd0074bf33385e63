"""The sent-message state on its own: key shape, config overrides, and the real 1,000 cap on a
real SQLite file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from teams_helpers import local_runtime, sent_rows

import chatstate.adapters.teams.state
from chatstate.adapters.teams.config import TeamsSettings
from chatstate.adapters.teams.state import (
    NAMESPACE,
    SENT_MAX_ENTRIES,
    SENT_MESSAGES,
    SENT_TTL_MS,
    SentMessages,
    sent_key,
    spec_from_config,
)
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.sdk import AdapterState, Writes

CHANNEL = "19:general0123456789@thread.tacv2"


def test_spec_is_the_design_table_row() -> None:
    assert (SENT_MESSAGES.namespace, SENT_MESSAGES.ttl_ms, SENT_MESSAGES.max_entries) == (
        "msteams.sent-messages",
        24 * 60 * 60 * 1000,
        1_000,
    )
    assert spec_from_config(_settings()) == SENT_MESSAGES
    assert spec_from_config(_settings(sent_ttl_ms=5, sent_max_entries=2)).max_entries == 2
    from_env = TeamsSettings.from_table({"app_id": "a"}, env={"CHATSTATE_TEAMS_SENT_TTL_MS": "5000"})
    assert spec_from_config(from_env).ttl_ms == 5000  # a number from the environment is an integer, not a refusal


async def record(sent: SentMessages, *ids: str) -> None:
    """Record sends the way a turn does: staged, then committed (with the done mark)."""
    writes = Writes()
    for activity_id in ids:
        sent.record(writes, CHANNEL, activity_id)
    await writes.commit()


def _settings(**table: object) -> TeamsSettings:
    return TeamsSettings.from_table({"app_id": "a", **table})


@pytest.mark.parametrize("config", [{"sent_ttl_ms": 0}, {"sent_max_entries": True}, {"sent_max_entries": "3"}])
def test_bad_overrides_name_the_key(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=f"adapters.teams.{next(iter(config))}"):
        _settings(**config)


def test_thread_replies_and_channel_posts_share_the_channel_key() -> None:
    assert sent_key(f"{CHANNEL};messageid=17", "17") == sent_key(CHANNEL, "17") == f"{CHANNEL}:17"
    assert sent_key("a:personal-chat", "1") == "a:personal-chat:1"


async def test_the_real_cap_evicts_the_oldest_send(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    runtime = local_runtime(db, {}, legacy=False)
    cache = AdapterState(spec_from_config(runtime.settings), legacy=False)
    await cache.open(runtime)
    sent = SentMessages(cache)
    try:
        for n in range(SENT_MAX_ENTRIES + 1):
            await record(sent, str(1_000_000 + n))
        rows = sent_rows(db)
        assert len(rows) == SENT_MAX_ENTRIES
        assert sent_key(CHANNEL, "1000000") not in rows
        assert next(iter(rows)) == sent_key(CHANNEL, "1000001")
        assert not await sent.sent_by_bot(CHANNEL, "1000000")
        assert await sent.sent_by_bot(CHANNEL, "1000001")
        assert await sent.sent_by_bot(f"{CHANNEL};messageid=1001000", str(1_000_000 + SENT_MAX_ENTRIES))
        entry = rows[sent_key(CHANNEL, "1001000")]
        assert entry.expires_at == entry.created_at + SENT_TTL_MS
        assert cache.health()["mode"] == "store" and cache.spec.namespace == NAMESPACE
    finally:
        await runtime.close()


async def test_legacy_twin_has_the_same_cap_in_memory_and_touches_no_file(tmp_path: Path) -> None:
    runtime = local_runtime(tmp_path / "state.sqlite", {"sent_max_entries": 2}, legacy=True)
    cache = AdapterState(spec_from_config(runtime.settings), legacy=True)
    await cache.open(runtime)
    sent = SentMessages(cache)
    await record(sent, "1", "2", "3")
    assert [await sent.sent_by_bot(CHANNEL, i) for i in ("1", "2", "3")] == [False, True, True]
    assert runtime.stores == [] and not (tmp_path / "state.sqlite").exists()


def test_store_code_is_sdk_free() -> None:
    """docs/migrations/teams.md promises that moving to the Microsoft 365 Agents SDK leaves the
    store-facing modules untouched; that holds only while they import no Bot Framework code."""
    for module in (chatstate.adapters.teams.state,):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {name for name in imported if name.split(".")[0] in {"botbuilder", "botframework", "msrest"}}
        assert imported  # the walk saw the imports at all

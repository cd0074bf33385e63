"""The registries over a real SQLite file, through a small runtime like the gateway's; and the
panel's entries, which must match what discord.py serializes onto the message."""

from __future__ import annotations

import asyncio
from pathlib import Path

import discord
import pytest
from discord_helpers import close_registry, open_registry
from runtime_support import FileRuntime

from chatstate.adapters.discord import handlers
from chatstate.adapters.discord.state import COMPONENTS, MODALS, UNANSWERED_MS, Registry, unwrap, wrap
from chatstate.gateway.clock import now_ms


def test_specs_are_the_design_table() -> None:
    assert (COMPONENTS.namespace, COMPONENTS.ttl_ms, COMPONENTS.max_entries) == ("discord.components", 1_800_000, 500)
    assert (MODALS.namespace, MODALS.ttl_ms, MODALS.max_entries) == ("discord.modals", 1_800_000, 500)


def test_values_carry_a_version_and_other_versions_read_as_expired() -> None:
    entry = {"action": "x"}
    assert wrap(entry) == {"version": 1, "entry": entry}
    assert unwrap(wrap(entry)) == entry
    for old in ({"version": 2, "entry": entry}, entry, None, {"version": 1, "entry": "x"}):
        assert unwrap(old) is None


async def test_panel_entries_match_what_discord_py_serializes() -> None:
    panel = handlers.build_panel(allowed_user_ids=["42"])
    serialized = [c for row in panel.view.to_components() for c in row["components"]]
    assert {c["custom_id"] for c in serialized} == set(panel.components)
    for c in serialized:
        entry = panel.components[c["custom_id"]]
        assert entry["component_type"] == c["type"]
        assert entry["allowed_user_ids"] == ["42"]
    kinds = {
        e["action"]: (discord.ComponentType(e["component_type"]), e["single_use"]) for e in panel.components.values()
    }
    assert kinds == {
        "refresh": (discord.ComponentType.button, False),
        "approve": (discord.ComponentType.button, True),
        "colour": (discord.ComponentType.string_select, False),
        "feedback": (discord.ComponentType.button, False),
    }
    trigger = next(e for e in panel.components.values() if e["action"] == "feedback")
    assert set(panel.modals) == {trigger["modal_id"]}
    assert all(len(cid) <= 100 for cid in panel.custom_ids)  # Discord's custom_id limit


@pytest.mark.parametrize("legacy", [False, True])
async def test_entries_survive_reopening_only_in_store_mode(tmp_path: Path, legacy: bool) -> None:
    db = tmp_path / "state.sqlite"
    panel = handlers.build_panel(allowed_user_ids=[])
    first = Registry(legacy=legacy, ttl_ms=60_000)
    await open_registry(first, FileRuntime("discord", db, legacy=legacy))
    await first.register(panel.components, panel.modals)
    approve = next(cid for cid, e in panel.components.items() if e["action"] == "approve")
    assert (await first.peek_component(approve)) == panel.components[approve]
    await close_registry(first)

    second = Registry(legacy=legacy, ttl_ms=60_000)  # a new process, same file
    await open_registry(second, FileRuntime("discord", db, legacy=legacy))
    try:
        if legacy:
            assert await second.peek_component(approve) is None
            assert not db.exists()
        else:
            assert await second.peek_component(approve) == panel.components[approve]
            assert unwrap(await second.components.take(approve)) == panel.components[approve]
            assert unwrap(await second.components.take(approve)) is None
            assert await second.peek_component(approve) is None
    finally:
        await close_registry(second)


async def test_forget_removes_every_entry_of_an_unsent_message(tmp_path: Path) -> None:
    panel = handlers.build_panel(allowed_user_ids=[])
    registries = Registry(legacy=False)
    await open_registry(registries, FileRuntime("discord", tmp_path / "state.sqlite"))
    try:
        await registries.register(panel.components, panel.modals)
        await registries.forget(panel.custom_ids)
        for cid in panel.components:
            assert await registries.peek_component(cid) is None
        for cid in panel.modals:
            assert await registries.peek_modal(cid) is None
    finally:
        await close_registry(registries)


async def test_a_use_is_taken_again_only_by_its_user_once_its_answer_window_is_over(tmp_path: Path) -> None:
    """A click still within Discord's answer window may yet be answered: its user's second
    click is refused. Past it, unanswered (the entry is still there), one retry of its user
    takes the use again, with a new time; another user never does."""
    registry = Registry(legacy=False)
    await open_registry(registry, FileRuntime("discord", tmp_path / "state.sqlite"))
    try:
        assert await registry.claim_use("approve:1", "alice")
        assert not await registry.claim_use("approve:1", "alice")  # in flight: it may still answer
        await registry.used.record("approve:1", {"user_id": "alice", "used_at": now_ms() - UNANSWERED_MS})
        assert not await registry.claim_use("approve:1", "bob")
        retries = await asyncio.gather(*(registry.claim_use("approve:1", "alice") for _ in range(3)))
        assert sorted(retries) == [False, False, True]
        assert await registry.used_by("approve:1") == "alice"
        assert not await registry.claim_use("approve:1", "alice")  # the retry's own window now
    finally:
        await close_registry(registry)

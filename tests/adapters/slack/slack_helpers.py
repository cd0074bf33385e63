"""Helpers for the Slack adapter tests: fixtures on disk and a read of what the gateway stored
(tests below the gateway run on tests/runtime_support.py's `FileRuntime`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chatstate import state
from chatstate.state import Entry

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "slack"
PLUGIN_ID = "slack"


def load_fixture(name: str) -> dict[str, Any]:
    """One payload from fixtures/slack/ (`name` without `.json`)."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def stored(db: Path, namespace: str) -> list[Entry]:
    """Live rows the gateway wrote in one Slack namespace, read through the state API."""
    store = state.open_keyed_store(PLUGIN_ID, namespace, max_entries=100_000, path=db)
    try:
        return store.entries()
    finally:
        store.close()

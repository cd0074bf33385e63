"""Every bundled adapter has the same five files, and docs/migrating-an-adapter.md's file table
names each module an adapter has beyond them: a new or renamed module that the table
does not mention fails here, so the table stays the map of every adapter."""

from __future__ import annotations

import re
from pathlib import Path

from chatstate.gateway.registry import BUNDLED

ROOT = Path(__file__).resolve().parents[2]
FIVE = {"config.py", "platform.py", "state.py", "handlers.py", "plugin.py"}
MAX_LINES = 350  # STYLE: modules of one job, <= ~350 lines


def _table() -> dict[str, str]:
    """The file table's columns by adapter: {adapter: the text of its column, all rows}."""
    doc = (ROOT / "docs" / "migrating-an-adapter.md").read_text()
    section = doc.split("## The files of an adapter", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0]]
    return {name: " ".join(row[i] for row in rows[1:]) for i, name in enumerate(header) if i >= 2}


def test_every_bundled_adapter_has_the_five_files_and_the_table_names_the_rest() -> None:
    table = _table()
    adapters = [a for a in BUNDLED if a != "echo"]
    assert sorted(table) == sorted(adapters)
    for adapter in adapters:
        files = {p.name for p in (ROOT / "adapters" / adapter).glob("*.py")} - {"__init__.py"}
        assert FIVE <= files, (adapter, FIVE - files)
        named = set(re.findall(r"`([a-z_]+\.py)`", table[adapter]))
        assert files - FIVE <= named, (adapter, "not in the file table:", files - FIVE - named)


def test_adapter_modules_stay_small() -> None:
    for path in sorted((ROOT / "adapters").glob("*/*.py")):
        assert len(path.read_text().splitlines()) <= MAX_LINES, path


def test_adapters_import_only_the_sdk_from_the_gateway() -> None:
    pattern = re.compile(r"^\s*(?:from|import)\s+(chatstate\.gateway[\w.]*)", re.MULTILINE)
    for path in sorted((ROOT / "adapters").glob("*/*.py")):
        imported = set(pattern.findall(path.read_text()))
        assert imported <= {"chatstate.gateway.sdk"}, (path, imported - {"chatstate.gateway.sdk"})

"""The docs follow the code: every module path the docs name exists, and the module
table in docs/state.md is exactly the files of `state/`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
MODULE_PATH = re.compile(r"(?<![\w/.-])((?:state|gateway|adapters|benchmarks|tests|chatstate)/[\w/.-]*\.py)\b")


def test_every_module_path_the_docs_name_exists() -> None:
    named = {(page.name, path) for page in PAGES for path in MODULE_PATH.findall(page.read_text(encoding="utf-8"))}
    assert len(named) > 10  # the pattern still finds what the docs cite
    assert sorted((page, path) for page, path in named if not (ROOT / path).is_file()) == []


def test_the_module_table_is_exactly_state() -> None:
    """docs/state.md's "## Modules" table names each file of state/ once, and nothing else."""
    text = (ROOT / "docs" / "state.md").read_text(encoding="utf-8")
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `state/([\w.]+)` \|", section, flags=re.MULTILINE)
    assert sorted(listed) == sorted(p.name for p in (ROOT / "state").glob("*.py"))
    assert len(listed) == len(set(listed)) <= 11  # ten, and the Redis client for Sentinel/Cluster/TLS


def test_a_write_is_followed_through_at_most_four_files() -> None:
    text = (ROOT / "docs" / "state.md").read_text(encoding="utf-8")
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    path = section.split("From `register()` to disk", 1)[1].split("\n\n", 1)[0]
    files = set(re.findall(r"`(state/[\w.]+\.py)`", path))
    assert 2 <= len(files) <= 4 and all((ROOT / f).is_file() for f in files)

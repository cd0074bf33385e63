"""`chatstate state probe|inspect` on a gateway's config, as an operator runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatstate.gateway.cli import main
from chatstate.state import database_path, open_keyed_store

PASSWORD = "Pw-never-shown"


def test_inspect_on_a_redis_gateway_says_so_instead_of_listing_an_unrelated_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "gw"
    with open_keyed_store("p", "stale.sqlite-rows", max_entries=1, path=database_path(state_dir)) as store:
        store.register("k", 1)  # a SQLite file in the state dir, but not the store this gateway uses
    config = tmp_path / "gw.toml"
    config.write_text(f'[state]\ndir = "{state_dir}"\nurl = "redis://default:{PASSWORD}@127.0.0.1:1/0"\n')
    monkeypatch.delenv("CHATSTATE_STATE_URL", raising=False)
    assert main(["state", "inspect", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert "stale.sqlite-rows" not in out and PASSWORD not in out + err
    assert "redis://default:***@127.0.0.1:1/0" in err and "chatstate state probe" in err and "--state-dir" in err
    # an explicit --state-dir still inspects that SQLite file
    assert main(["state", "inspect", "--config", str(config), "--state-dir", str(state_dir)]) == 0
    assert "stale.sqlite-rows" in capsys.readouterr().out

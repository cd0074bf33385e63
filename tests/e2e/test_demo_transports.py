"""`chatstate demo --transport`: the Slack and Discord conversations over Socket Mode and
the Discord Gateway, split by a SIGKILL, pass with the keyed store and fail without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WEBSOCKET_BEHAVIOURS = {
    ("slack (socket mode)", "untagged follow-up in a participated thread"),
    ("discord (gateway)", "click dispatched while the gateway was down"),
    ("discord (gateway)", "click a pre-restart single-use button"),
    ("discord (gateway)", "submit a modal opened before the restart"),
}


def test_websocket_transports_survive_a_sigkill_with_the_store_only(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "chatstate", "demo", "--json", "--transport", "websocket"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["transport"] == "websocket"
    assert {(r["adapter"], r["behaviour"]) for r in report["rows"]} == WEBSOCKET_BEHAVIOURS  # teams/matrix: HTTP only
    assert all(r["store_survived"] and not r["legacy_survived"] for r in report["rows"]), report["rows"]
    assert list(tmp_path.iterdir()) == []

"""The walk-through adapter in docs/examples runs, stays short, and survives a real restart."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from chatstate.gateway.sim.harness import GatewayHarness, GatewayStartError

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
SECRET = "toy-secret"
sys.path.insert(0, str(EXAMPLES))
from toy_adapter import sign  # noqa: E402


async def ack(gw: GatewayHarness, alert_id: str, user: str, *, secret: str = SECRET) -> tuple[int, Any]:
    body = json.dumps({"alert_id": alert_id, "user": user}).encode()
    headers = {"X-Toy-Signature": sign(secret, body), "Content-Type": "application/json"}
    async with gw.http.post(f"{gw.gateway_url}/toy/ack", data=body, headers=headers) as resp:
        return resp.status, (await resp.json() if resp.status == 200 else await resp.text())


def harness(tmp_path: Path, mode: str, *, trusted: bool = True) -> GatewayHarness:
    return GatewayHarness(
        modes={"toy": mode},
        adapters={"toy": {"secret": SECRET}},
        config={"external_plugins": ["toy_adapter:ToyPlugin"], "trusted_plugins": ["toy"] if trusted else []},
        pythonpath=[EXAMPLES],
        state_dir=tmp_path / "state",
    )


def test_toy_adapter_is_under_100_lines() -> None:
    assert len((EXAMPLES / "toy_adapter.py").read_text().splitlines()) < 100


@pytest.mark.parametrize("mode, second_wins", [("store", False), ("legacy", True)])
async def test_first_ack_survives_sigkill_only_with_the_store(tmp_path: Path, mode: str, second_wins: bool) -> None:
    async with harness(tmp_path, mode) as gw:
        assert await ack(gw, "alert-1", "alice") == (200, {"alert_id": "alert-1", "acked_by": "alice", "first": True})
        status, body = await ack(gw, "alert-1", "bob")
        assert (status, body["first"], body["acked_by"]) == (200, False, "alice")
        await gw.restart(kind="kill")
        status, body = await ack(gw, "alert-1", "carol")
        assert status == 200
        assert body["first"] is second_wins
        assert body["acked_by"] == ("carol" if second_wins else "alice")


async def test_bad_signature_is_refused(tmp_path: Path) -> None:
    async with harness(tmp_path, "store") as gw:
        status, _ = await ack(gw, "alert-2", "mallory", secret="wrong")
        assert status == 401
        assert (await ack(gw, "alert-2", "alice"))[1]["first"] is True  # the 401 claimed nothing


async def test_untrusted_external_plugin_cannot_get_a_store(tmp_path: Path) -> None:
    with pytest.raises(GatewayStartError) as info:
        async with harness(tmp_path, "store", trusted=False):
            pass
    assert info.value.exit_code not in (0, None)
    assert "trusted_plugins" in info.value.log_tail


DOC = EXAMPLES.parent / "migrating-an-adapter.md"


def test_the_recipe_and_the_toy_adapter_number_their_steps_alike() -> None:
    """Each `# N. Title` in the toy adapter is the page's `### N. Title`, and every step is there."""
    steps = dict(re.findall(r"^### (\d+)\. (.+)$", DOC.read_text(), re.M))
    assert list(steps) == [str(n) for n in range(1, len(steps) + 1)]
    toy = re.findall(r"^\s*# (\d+)\. ([^:]+?)(?::|$)", (EXAMPLES / "toy_adapter.py").read_text(), re.M)
    assert sorted({n for n, _ in toy}, key=int) == list(steps)
    for number, title in toy:
        assert steps[number].startswith(title.strip()), (number, title, steps[number])


def test_the_docs_cite_only_files_in_the_repository() -> None:
    """The adapter-author docs used to cite a "DESIGN.md §3" that is not in the repository."""
    root = EXAMPLES.parents[1]
    for page in [DOC, *sorted((root / "docs").rglob("*.md")), root / "README.md"]:
        assert "DESIGN.md" not in page.read_text(), page

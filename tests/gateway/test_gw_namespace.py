"""One import namespace: the CLI runs from a folder that holds `state/`,
`gateway/` and `adapters/` folders of its own (a checkout of something else, or this repository's
own top-level folders). Before, the distribution installed top-level `state`, `gateway` and
`adapters` packages, and `python -m gateway status` there failed with `AttributeError: module
'state' has no attribute 'database_path'`: the folder's `state` shadowed ours. Every command here
is a real `python -m chatstate` process started in such a folder; each junk package raises when
imported, so the test also proves nothing in chatstate imports a top-level `state`, `gateway` or
`adapters`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gw_helpers import SECRET

from chatstate.gateway.sim.harness import GatewayHarness, run_gateway_cli


def _junk_folder(tmp_path: Path) -> Path:
    """A folder with `state/`, `gateway/` and `adapters/` packages that must never be imported."""
    here = tmp_path / "elsewhere"
    for name in ("state", "gateway", "adapters"):
        (here / name).mkdir(parents=True)
        (here / name / "__init__.py").write_text(
            f"raise ImportError('the junk top-level {name!r} package was imported')\n"
        )
    return here


async def test_status_and_check_only_from_a_folder_holding_state_gateway_and_adapters(tmp_path: Path) -> None:
    here = _junk_folder(tmp_path)
    config = here / "gateway.toml"
    config.write_text(f'[state]\ndir = "{tmp_path / "fresh"}"\n\n[adapters.echo]\nsecret = "{SECRET}"\n')

    status = await run_gateway_cli("status", "--state-dir", str(tmp_path / "fresh"), cwd=here)
    assert status.returncode == 1, status.stderr  # not running: the documented answer, no traceback
    assert status.stdout.splitlines()[1].startswith("store: no database yet")
    assert "Traceback" not in status.stderr

    checked = await run_gateway_cli("start", "--check-only", "--config", "gateway.toml", cwd=here)
    assert checked.returncode == 0, checked.stderr

    probe = await run_gateway_cli("state", "probe", "--state-dir", str(tmp_path / "fresh"), cwd=here)
    assert "Traceback" not in probe.stderr and "junk" not in probe.stderr, probe.stderr


async def test_status_of_a_running_gateway_from_such_a_folder(tmp_path: Path) -> None:
    here = _junk_folder(tmp_path)
    async with GatewayHarness(adapters={"echo": {"secret": SECRET}}, state_dir=tmp_path / "state") as gw:
        status = await run_gateway_cli("status", "--json", "--state-dir", str(gw.state_dir), cwd=here)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert (report["running"], report["health"], report["adapters"], report["store"]["ok"]) == (
            True,
            "ok",
            {"echo": "ok"},
            True,
        )


def test_the_junk_folder_really_shadows_top_level_names(tmp_path: Path) -> None:
    """The control: from that folder a plain `import state` does hit the junk package, so the
    tests above would fail if chatstate imported a top-level name."""
    import subprocess

    here = _junk_folder(tmp_path)
    got = subprocess.run([sys.executable, "-c", "import state"], cwd=here, capture_output=True, text=True, timeout=60)
    assert got.returncode != 0 and "junk top-level 'state'" in got.stderr

"""The gateway as a real process: restarts keep state, refusals exit with the documented codes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import stat
from pathlib import Path

import aiohttp
import pytest
from gw_helpers import EXT_PLUGINS_DIR, SECRET, bump, read_count, stored_counts

from chatstate.gateway.echo import sign
from chatstate.gateway.sim.harness import GatewayHarness, GatewayStartError, free_port, run_gateway_cli


async def test_sigterm_then_start_keeps_state(gw: GatewayHarness) -> None:
    assert [await bump(gw, "a") for _ in range(3)] == [1, 2, 3]
    assert await bump(gw, "b") == 1

    assert await gw.stop() == 0
    assert stored_counts(gw.database_path) == {"a": 3, "b": 1}
    events = [e["event"] for e in gw.logs(1)]
    # shutdown order: stop plugins, final sweep + checkpoint, then gone
    order = [events.index(x) for x in ("gateway_stopping", "plugin_stopped", "sweep", "checkpoint", "gateway_stopped")]
    assert order == sorted(order)
    assert not (gw.state_dir / "gateway.pid").exists()

    await gw.start()
    assert await read_count(gw, "a") == 3
    assert await bump(gw, "a") == 4


async def test_sigkill_mid_traffic_loses_no_acknowledged_write(gw: GatewayHarness) -> None:
    acked: dict[str, int] = {}
    attempted: dict[str, int] = {}
    enough = asyncio.Event()

    async def writer(key: str) -> None:
        while True:
            attempted[key] = attempted.get(key, 0) + 1
            try:
                acked[key] = await bump(gw, key)
            except (aiohttp.ClientError, OSError):
                return  # the gateway is gone
            if sum(acked.values()) >= 200:
                enough.set()

    writers = [asyncio.create_task(writer(f"k{i}")) for i in range(8)]
    await enough.wait()
    assert await gw.kill() == -9
    await asyncio.gather(*writers)

    await gw.start()
    for key, count in acked.items():
        stored = await read_count(gw, key)
        # every acknowledged increment survived; at most the one in flight was also written
        assert count <= stored <= attempted[key]


async def test_second_start_on_same_state_dir_exits_4(gw: GatewayHarness) -> None:
    result = await run_gateway_cli("start", "--config", str(gw.config_path), "--port", str(free_port()))
    assert result.returncode == 4
    state_dir = gw.state_dir.absolute()
    assert result.stderr.splitlines()[-1] == (
        f"gateway: a gateway is already running on {state_dir} (pid {gw.pid}); stop it with "
        f"`chatstate stop --state-dir {state_dir}` or restart it with `chatstate restart --state-dir {state_dir}`, "
        "or give this one another --state-dir"
    )
    assert (await gw.healthz())[0] == 200  # the first one is unharmed


async def test_port_in_use_exits_4(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run_gateway_cli("start", "--state-dir", str(tmp_path), "--port", str(port))
    assert result.returncode == 4
    assert result.stderr.splitlines()[-1] == (
        f"gateway: port {port} on 127.0.0.1 is already in use; choose another with --port N, [gateway] port "
        "in the config or CHATSTATE_GATEWAY_PORT (0 = any free port), or stop what listens there"
    )


async def test_corrupt_state_file_exits_3_and_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "state" / "plugin-state" / "state.sqlite"
    db.parent.mkdir(parents=True)
    junk = b"this is not a SQLite database\n" * 200
    db.write_bytes(junk)
    os.chmod(db, 0o644)
    before = os.stat(db)

    h = GatewayHarness(adapters={"echo": {"secret": SECRET}}, state_dir=tmp_path / "state")
    with pytest.raises(GatewayStartError) as info:
        async with h:
            pass
    assert info.value.exit_code == 3
    assert "not a SQLite database" in info.value.log_tail
    assert db.read_bytes() == junk
    after = os.stat(db)
    assert (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (stat.S_IMODE(before.st_mode), before.st_mtime_ns)
    assert sorted(p.name for p in db.parent.iterdir()) == ["state.sqlite"]  # no -wal/-shm created


async def test_bad_signature_is_401_and_writes_nothing(gw: GatewayHarness) -> None:
    body = json.dumps({"key": "x"}).encode()
    for headers in (
        {},
        {"X-Echo-Signature": "sha256=" + "0" * 64},
        {"X-Echo-Signature": sign("wrong-secret", "POST", "/echo", body)},
    ):
        async with gw.http.post(f"{gw.gateway_url}/echo", data=body, headers=headers) as resp:
            assert resp.status == 401
    async with gw.http.get(f"{gw.gateway_url}/echo/x") as resp:
        assert resp.status == 401
    assert await gw.stop() == 0
    assert stored_counts(gw.database_path) == {}


async def test_body_over_one_mib_is_413(gw: GatewayHarness) -> None:
    body = json.dumps({"key": "big", "pad": "x" * (1024 * 1024)}).encode()
    headers = {"X-Echo-Signature": sign(SECRET, "POST", "/echo", body)}
    async with gw.http.post(f"{gw.gateway_url}/echo", data=io.BytesIO(body), headers=headers) as resp:
        assert resp.status == 413

    async def chunks():  # no Content-Length: capped when the handler reads the body
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    async with gw.http.post(f"{gw.gateway_url}/echo", data=chunks(), headers=headers) as resp:
        assert resp.status == 413
    assert await bump(gw, "small") == 1
    assert await gw.stop() == 0
    assert stored_counts(gw.database_path) == {"small": 1}


async def test_external_plugin_without_trust_is_refused(tmp_path: Path) -> None:
    h = GatewayHarness(
        config={"external_plugins": ["gw_ext_plugin:NotesPlugin"]}, pythonpath=[EXT_PLUGINS_DIR], state_dir=tmp_path
    )
    with pytest.raises(GatewayStartError) as info:
        async with h:
            pass
    assert info.value.exit_code == 2
    assert "trusted_plugins" in info.value.log_tail
    assert any(e["event"] == "store_denied" and e["plugin"] == "ext-notes" for e in h.logs())


async def test_trusted_external_plugin_gets_a_store(tmp_path: Path) -> None:
    config = {"external_plugins": ["gw_ext_plugin:NotesPlugin"], "trusted_plugins": ["ext-notes"]}
    async with GatewayHarness(config=config, pythonpath=[EXT_PLUGINS_DIR], state_dir=tmp_path) as h:
        url = f"{h.gateway_url}/ext/notes"
        async with h.http.post(url, json={"key": "k", "value": 1}) as resp:
            assert resp.status == 401
        async with h.http.post(
            url, json={"key": "k", "value": 1}, headers={"Authorization": "Bearer ext-token"}
        ) as resp:
            assert resp.status == 200
        status, body = await h.healthz()
        assert body["adapters"]["ext-notes"]["origin"] == "external"  # not what the class claimed
        await h.restart()
        assert (await h.healthz())[1]["status"] == "ok"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[gateway]\nport = "80"\n', "gateway.port"),
        ("[gateway]\nprot = 80\n", "gateway.prot"),
        ('[adapters.echo]\nsecret = "s"\nmode = "memory"\n', "adapters.echo.mode"),
        ("[adapters.nope]\nenabled = true\n", "adapters.nope"),
        ("[adapters.echo]\nenabled = true\n", "adapters.echo.secret"),  # the plugin's own check
        ("[state]\nsweep_interval_s = 0\n", "state.sweep_interval_s"),
        ("gateway = [\n", "gateway.toml"),
    ],
)
async def test_bad_config_exits_2_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    result = await run_gateway_cli("start", "--config", str(path), "--state-dir", str(tmp_path / "s"), "--port", "0")
    assert result.returncode == 2
    assert key in result.stderr


async def test_detach_status_stop(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nport = {free_port()}\n[state]\ndir = "{tmp_path / "s"}"\n[adapters.echo]\nsecret = "{SECRET}"\n'
    )
    started = await run_gateway_cli("start", "--detach", "--config", str(config))
    assert started.returncode == 0, started.stderr
    pid = json.loads(started.stdout)["pid"]
    try:
        status = await run_gateway_cli("status", "--json", "--config", str(config))
        assert status.returncode == 0
        report = json.loads(status.stdout)
        assert (report["running"], report["pid"], report["health"]) == (True, pid, "ok")
        assert report["store"]["ok"] and report["adapters"] == {"echo": "ok"}

        again = await run_gateway_cli("start", "--detach", "--config", str(config))
        assert again.returncode == 4

        restarted = await run_gateway_cli("restart", "--config", str(config))
        assert restarted.returncode == 0, restarted.stderr
        pid = json.loads(restarted.stdout)["pid"]

        stopped = await run_gateway_cli("stop", "--config", str(config))
        assert stopped.returncode == 0 and "stopped" in stopped.stderr
        down = await run_gateway_cli("status", "--config", str(config))
        assert down.returncode == 1 and "not running" in down.stdout
        assert not (tmp_path / "s" / "gateway.pid").exists()
        assert (await run_gateway_cli("stop", "--config", str(config))).returncode == 0  # idempotent
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


async def test_status_timeout_0_does_not_wait_and_does_not_call_a_healthy_gateway_unreachable(
    gw: GatewayHarness,
) -> None:
    """docs/gateway.md: every `S` is >= 0, `0`: do not wait."""
    text = await gw.cli("status", "--timeout", "0")
    assert text.returncode == 0, text.stderr
    assert "health: not checked (--timeout 0)" in text.stdout and "unreachable" not in text.stdout
    report = json.loads((await gw.cli("status", "--json", "--timeout", "0")).stdout)
    assert report["running"] is True and report["health"] == "not checked (--timeout 0)" and "error" not in report


async def test_state_commands_delegate_to_the_state_cli(gw: GatewayHarness) -> None:
    await bump(gw, "a")
    probe = await gw.cli("state", "probe")
    assert probe.returncode == 0 and json.loads(probe.stdout)["ok"] is True
    await gw.stop()
    inspect = await gw.cli("state", "inspect", "--json", "--namespace", "echo.counters")
    assert inspect.returncode == 0
    assert [k["key"] for k in json.loads(inspect.stdout)["keys"]] == ["a"]


async def test_healthz_reports_plugins_store_and_sweeper(gw: GatewayHarness) -> None:
    status, body = await gw.healthz()
    assert status == 200
    assert body["status"] == "ok" and body["ready"] is True
    assert body["store"]["ok"] is True and body["store"]["database_path"] == str(gw.database_path)
    echo = body["adapters"]["echo"]
    assert {k: echo[k] for k in ("status", "mode", "origin")} == {"status": "ok", "mode": "store", "origin": "bundled"}
    assert echo["state"]["echo.counters"]["mode"] == "store"  # each namespace, rolled up by the plugin base
    assert body["sweeper"]["interval_s"] == 60.0


async def test_legacy_mode_forgets_on_restart(tmp_path: Path) -> None:
    async with GatewayHarness(adapters={"echo": {"secret": SECRET}}, modes="legacy", state_dir=tmp_path) as h:
        assert await bump(h, "a") == 1
        assert await bump(h, "a") == 2
        await h.restart()
        assert await bump(h, "a") == 1  # the "before": in-memory state is lost
        assert (await h.healthz())[1]["adapters"]["echo"]["mode"] == "legacy"

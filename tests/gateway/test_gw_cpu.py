"""`[gateway] cpu`: an opt-in pin of the whole gateway process to one CPU, so the event
loop and the store's writer thread wake each other on the same CPU. Real gateway processes; the
affinity is read back from the kernel for every thread of the running gateway."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from gw_helpers import SECRET, bump

from chatstate.gateway.sim.harness import GatewayHarness, free_port, run_gateway_cli

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only")


def thread_affinities(pid: int) -> dict[int, set[int]]:
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found[int(tid)] = os.sched_getaffinity(int(tid))
        except ProcessLookupError:  # an idle worker thread retired meanwhile
            pass
    return found


async def test_every_thread_of_a_pinned_gateway_runs_on_that_cpu(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    async with GatewayHarness(
        adapters={"echo": {"secret": SECRET}}, state_dir=tmp_path / "state", config={"gateway": {"cpu": cpu}}
    ) as gw:
        assert [await bump(gw, "k") for _ in range(3)] == [1, 2, 3]  # the writer thread exists now
        assert gw.pid is not None
        threads = thread_affinities(gw.pid)
        assert len(threads) >= 2 and all(cpus == {cpu} for cpus in threads.values()), threads


async def test_without_the_key_the_gateway_keeps_the_affinity_it_was_started_with(tmp_path: Path) -> None:
    async with GatewayHarness(adapters={"echo": {"secret": SECRET}}, state_dir=tmp_path / "state") as gw:
        await bump(gw, "k")
        assert gw.pid is not None
        assert set(map(frozenset, thread_affinities(gw.pid).values())) == {frozenset(os.sched_getaffinity(0))}


@pytest.mark.parametrize("value", ["4096", "-1", '"fast"', "true"])
async def test_a_cpu_this_process_may_not_use_is_refused_before_anything_starts(tmp_path: Path, value: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ncpu = {value}\nport = 0\n\n[state]\ndir = "{tmp_path / "state"}"\n')
    for argv in (("start", "--check-only"), ("start",)):
        result = await run_gateway_cli(*argv, "--config", str(config), timeout_s=30)
        assert result.returncode == 2, (argv, result.stderr)
        assert "gateway.cpu" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "state" / "plugin-state").exists()  # refused before the store was touched


async def test_the_environment_variable_sets_it_too(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n')
    env = {**os.environ, "CHATSTATE_GATEWAY_CPU": "4096"}
    result = await run_gateway_cli("start", "--check-only", "--config", str(config), env=env)
    assert result.returncode == 2 and "CHATSTATE_GATEWAY_CPU" in result.stderr, result.stderr
    env["CHATSTATE_GATEWAY_CPU"] = str(min(os.sched_getaffinity(0)))
    result = await run_gateway_cli("start", "--check-only", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr


async def test_restart_keeps_the_pin_and_refuses_a_bad_cpu_without_stopping_anything(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    env = {**os.environ, "CHATSTATE_HOME": str(tmp_path / "home")}
    env.pop("CHATSTATE_GATEWAY_CONFIG", None)
    port = free_port()
    (tmp_path / "gw.toml").write_text(f'[gateway]\nport = {port}\ncpu = {cpu}\n[adapters.echo]\nsecret = "{SECRET}"\n')
    started = await run_gateway_cli("start", "--detach", "--config", str(tmp_path / "gw.toml"), env=env)
    assert started.returncode == 0, started.stderr
    try:
        first = json.loads(started.stdout)["pid"]
        restarted = await run_gateway_cli("restart", env=env)  # from the recorded launch
        assert restarted.returncode == 0, restarted.stderr
        second = json.loads(restarted.stdout)["pid"]
        assert second != first
        assert set(map(frozenset, thread_affinities(second).values())) == {frozenset({cpu})}

        (tmp_path / "bad.toml").write_text(f'[gateway]\nport = {port}\ncpu = 4096\n[adapters.echo]\nsecret = "s"\n')
        refused = await run_gateway_cli("restart", "--config", str(tmp_path / "bad.toml"), env=env)
        assert refused.returncode == 2 and "gateway.cpu" in refused.stderr, refused.stderr
        os.kill(second, 0)  # still running: the refusal stopped nothing
    finally:
        stopped = await run_gateway_cli("stop", env=env)
    assert stopped.returncode == 0, stopped.stderr

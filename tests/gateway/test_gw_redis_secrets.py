"""The Redis password is never shown: a real gateway on a password-protected Redis, and every
place that prints a location — /healthz (up, degraded, recovered), /metrics, `chatstate
status` (running and stopped, text and JSON), `chatstate state probe`, the gateway's logs, the
error of a refused start, a Database's location and repr — grepped for it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from redis_support import RedisServer

from chatstate import state
from chatstate.gateway.sim.harness import CliResult, GatewayHarness, free_port, run_gateway_cli
from chatstate.state._database import shown_url

PASSWORD = "Hunter2-never-shown"
WRONG = "Wrong-pw-never-shown"
HEALTH_DEADLINE_S = 15.0


async def wait_health(gw: GatewayHarness, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + HEALTH_DEADLINE_S
    while True:
        _, body = await gw.healthz()
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, body["store"]
        await gw.http.get(f"{gw.gateway_url}/metrics")  # any request; the probe runs on /healthz
        time.sleep(0.2)  # noqa: ASYNC251 -- a short pause between polls of a real process


async def test_the_redis_password_appears_nowhere(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", extra=["--requirepass", PASSWORD], password=PASSWORD)
    server.start()
    url = f"redis://default:{PASSWORD}@127.0.0.1:{server.port}/0?prefix=secrets&retries=1&backoff_cap_s=0.05"
    shown: list[str] = []
    try:
        gw = GatewayHarness(
            [], adapters={"echo": {"secret": "s"}}, config={"state": {"url": url}}, state_dir=tmp_path / "gw"
        )
        async with gw:
            shown.append(str(await wait_health(gw, "ok")))
            async with gw.http.get(f"{gw.gateway_url}/metrics") as resp:
                shown.append(await resp.text())
            for args in (("status",), ("status", "--json"), ("state", "probe")):
                result = await gw.cli(*args)
                shown += [result.stdout, result.stderr]
            server.stop(kill=True)
            shown.append(str(await wait_health(gw, "degraded")))  # the failed probe names the location
            server.start()
            shown.append(str(await wait_health(gw, "ok")))
        for args in (("status",), ("status", "--json")):  # stopped: the config's URL, not probed
            result = await gw.cli(*args)
            shown += [result.stdout, result.stderr]
        shown += [p.read_text() for p in gw.state_dir.glob("*.log")]

        bad = tmp_path / "bad.toml"
        bad.write_text(
            f'[gateway]\nport = {free_port()}\n[state]\ndir = "{tmp_path / "bad"}"\n'
            f'url = "{url.replace(PASSWORD, WRONG)}"\n[adapters.echo]\nsecret = "s"\n'
        )
        refused = await run_gateway_cli("start", "--config", str(bad))
        assert refused.returncode == 3 and "credentials" in refused.stderr, refused
        shown += [refused.stdout, refused.stderr]
        database = state.Database(url=url)
        shown += [database.location, repr(database), str(state.probe(url=url.replace(PASSWORD, WRONG)))]
    finally:
        server.stop()

    everything = "\n".join(shown)
    assert PASSWORD not in everything and WRONG not in everything
    # not vacuous: the location is there, with the user and the password's place kept
    assert everything.count(f"redis://default:***@127.0.0.1:{server.port}/0") >= 8


async def test_a_bad_redis_url_is_a_config_error_that_hides_the_password(tmp_path: Path) -> None:
    # an option nobody knows, and a password with an unencoded '/' (its URL's host part ends early)
    for url in (
        f"redis://default:{PASSWORD}@127.0.0.1:{free_port()}/0?bogus=1",
        f"redis://default:ab{PASSWORD}/x@127.0.0.1:{free_port()}/0",
    ):
        config = tmp_path / "bad-url.toml"
        config.write_text(
            f'[gateway]\nport = {free_port()}\n[state]\ndir = "{tmp_path / "gw"}"\n'
            f'url = "{url}"\n[adapters.echo]\nsecret = "s"\n'
        )
        refused = await run_gateway_cli("start", "--config", str(config))
        assert refused.returncode == 2 and "config error" in refused.stderr and "INVALID_INPUT" in refused.stderr, (
            refused
        )
        logged = "".join(p.read_text() for p in (tmp_path / "gw").glob("*.log"))
        assert PASSWORD not in refused.stdout + refused.stderr + logged


async def test_check_only_refuses_a_url_option_the_store_would_refuse_naming_it_and_its_variable(
    tmp_path: Path,
) -> None:
    """`start --check-only` (which `restart` runs before it stops anything) connects to nothing, yet says what
    opening the store would: here a typo in redis-py's option, given in the environment as operators keep
    passwords out of config files."""
    url = f"redis://default:{PASSWORD}@127.0.0.1:{free_port()}/0?prefix=p&socket_keepalve=true"
    env = {**os.environ, "CHATSTATE_STATE_URL": url}
    args = ("start", "--state-dir", str(tmp_path / "gw"), "--check-only")
    refused = await run_gateway_cli(*args, env=env, cwd=tmp_path)
    assert refused.returncode == 2, refused
    [line] = refused.stderr.splitlines()
    assert line.startswith("gateway: config error: state.url: INVALID_INPUT during open: the Redis URL has an option")
    assert "socket_keepalve; did you mean socket_keepalive?" in line and "(from $CHATSTATE_STATE_URL)" in line
    assert "default:***@" in line and PASSWORD not in refused.stdout + refused.stderr
    fixed = await run_gateway_cli(*args, env={**env, "CHATSTATE_STATE_URL": url.replace("keepalve", "keepalive")})
    assert fixed.returncode == 0, fixed


async def test_a_password_given_in_the_environment_is_never_written_to_the_state_dir(tmp_path: Path) -> None:
    """`CHATSTATE_STATE_URL` with a password, as operators keep secrets out of config files:
    the launch record (gateway.pid, last-launch.json) names the variable but holds no value, and
    `restart` still starts the same store — from the running gateway's environment, else from
    this shell's, and refuses naming the variable when neither has it."""
    server = RedisServer(tmp_path / "redis", extra=["--requirepass", PASSWORD], password=PASSWORD)
    server.start()
    url = f"redis://default:{PASSWORD}@127.0.0.1:{server.port}/0?prefix=envsecret"
    state_dir = tmp_path / "gw"
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\nport = {free_port()}\n[state]\ndir = "{state_dir}"\n[adapters.echo]\nsecret = "s"\n')
    shell = {k: v for k, v in os.environ.items() if not k.startswith("CHATSTATE_")}
    with_url = {**shell, "CHATSTATE_STATE_URL": url}
    shown: list[str] = []
    try:

        async def run(*args: str, env: dict[str, str]) -> CliResult:
            result = await run_gateway_cli(*args, "--state-dir", str(state_dir), env=env)
            shown.extend((result.stdout, result.stderr, *(p.read_text() for p in sorted(state_dir.iterdir()))))
            return result

        async def store_is_redis() -> None:
            report = json.loads((await run("status", "--json", env=shell)).stdout)
            assert (report["health"], report["store"]["database_path"]) == ("ok", shown_url(url)), report

        started = await run("start", "--detach", "--config", str(config), env=with_url)
        assert started.returncode == 0, started.stderr
        await store_is_redis()
        restarted = await run("restart", env=shell)  # running: its own environment has the URL
        assert restarted.returncode == 0, restarted.stderr
        await store_is_redis()
        assert (await run("stop", env=shell)).returncode == 0
        refused = await run("restart", env=shell)  # nothing runs, and this shell lacks it
        assert refused.returncode == 2 and "CHATSTATE_STATE_URL" in refused.stderr, refused
        again = await run("restart", env=with_url)
        assert again.returncode == 0, again.stderr
        await store_is_redis()
        assert (await run("stop", env=shell)).returncode == 0
    finally:
        await run_gateway_cli("stop", "--state-dir", str(state_dir))
        server.stop()
    everything = "\n".join(shown)
    assert PASSWORD not in everything
    assert "CHATSTATE_STATE_URL" in (state_dir / "last-launch.json").read_text()  # named, not written

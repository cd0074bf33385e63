"""The user's reply hook (gateway/reply.py) in a real gateway subprocess running the echo plugin:
a hook module from a folder of its own answers; one that raises, hangs or returns a non-string
is logged and answered with the apology, never a 5xx; a hook that cannot be imported is a
config error naming the key and the folder."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from gw_helpers import SECRET

from chatstate.gateway.echo import sign
from chatstate.gateway.reply import APOLOGY
from chatstate.gateway.sim.harness import GatewayHarness, run_gateway_cli

HOOK = textwrap.dedent(
    """
    import asyncio
    import time

    from chatstate.gateway.reply import Message


    def answer(message: Message) -> object:
        if message.text == "boom":
            raise RuntimeError("the bot's own bug")
        if message.text == "hang":
            time.sleep(30)  # a plain function runs on a thread: the gateway gives up on it
        if message.text == "number":
            return 42
        if message.text == "quiet":
            return None
        return f"{message.platform}/{message.user}: {message.text.upper()}"


    async def answer_async(message: Message) -> str:
        if message.text == "hang":
            await asyncio.sleep(30)
        return "async " + message.text
    """
)


def hook_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mybot"
    folder.mkdir()
    (folder / "mybot_logic.py").write_text(HOOK)
    return folder


async def say(h: GatewayHarness, key: str, text: str) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"key": key, "text": text}).encode()
    headers = {"X-Echo-Signature": sign(SECRET, "POST", "/echo", body), "Content-Type": "application/json"}
    async with h.http.post(f"{h.gateway_url}/echo", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_the_hook_answers_and_its_faults_get_an_apology(tmp_path: Path) -> None:
    table = {"secret": SECRET, "reply": "mybot_logic:answer", "reply_timeout_s": 0.5}
    async with GatewayHarness(
        adapters={"echo": table}, state_dir=tmp_path / "state", pythonpath=[hook_folder(tmp_path)]
    ) as gw:
        assert await say(gw, "alice", "hello") == (200, {"key": "alice", "count": 1, "reply": "echo/alice: HELLO"})
        assert await say(gw, "alice", "quiet") == (200, {"key": "alice", "count": 2, "reply": None})
        for text in ("boom", "hang", "number"):
            status, body = await say(gw, "bob", text)
            assert (status, body["reply"]) == (200, APOLOGY), text
        assert await say(gw, "bob", "after") == (200, {"key": "bob", "count": 4, "reply": "echo/bob: AFTER"})
        events = {e["event"]: e for e in gw.logs() if e["event"].startswith("reply_hook_")}
        assert events["reply_hook_failed"]["hook"] == "mybot_logic:answer"
        assert "the bot's own bug" in events["reply_hook_failed"]["error"]
        assert events["reply_hook_timeout"]["timeout_s"] == 0.5
        assert events["reply_hook_bad_return"]["returned"] == "int"
        assert await gw.stop() == 0  # a thread still stuck in the hook does not hold the exit


async def test_an_async_hook_is_bounded_by_the_timeout_too(tmp_path: Path) -> None:
    table = {"secret": SECRET, "reply": "mybot_logic:answer_async", "reply_timeout_s": 0.5}
    async with GatewayHarness(
        adapters={"echo": table}, state_dir=tmp_path / "state", pythonpath=[hook_folder(tmp_path)]
    ) as gw:
        assert (await say(gw, "a", "hi"))[1]["reply"] == "async hi"
        assert (await say(gw, "a", "hang"))[1]["reply"] == APOLOGY


async def test_without_a_hook_the_echo_stays(tmp_path: Path) -> None:
    async with GatewayHarness(adapters={"echo": {"secret": SECRET}}, state_dir=tmp_path / "state") as gw:
        assert (await say(gw, "a", "hi"))[1]["reply"] == "echo: hi"


async def test_a_hook_that_cannot_be_imported_names_the_key_and_the_folder(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'[adapters.echo]\nsecret = "{SECRET}"\nreply = "mybot_logic:answer"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ("start", "--config", str(config), "--state-dir", str(tmp_path / "state"), "--check-only")
    result = await run_gateway_cli(*args, cwd=elsewhere, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result
    assert result.stderr.startswith("gateway: config error: adapters.echo.reply: cannot import 'mybot_logic': ")
    assert str(elsewhere) in result.stderr and "PYTHONPATH" in result.stderr
    assert "Traceback" not in result.stderr
    # from the folder that holds it, the same command passes
    ok = await run_gateway_cli(*args, cwd=hook_folder(tmp_path), env={"PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok


async def test_a_reply_that_is_not_module_function_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'[adapters.echo]\nsecret = "{SECRET}"\nreply = "mybot_logic.answer"\n')
    result = await run_gateway_cli("start", "--config", str(config), "--state-dir", str(tmp_path / "s"), "--check-only")
    assert result.returncode == 2 and "adapters.echo.reply" in result.stderr, result


async def test_a_registered_function_answers_and_a_configured_one_wins() -> None:
    from chatstate.gateway import reply

    message = reply.Message("hi", "u1", "c1", "reg-test")
    try:
        assert await reply.answer(message, default="stand-in") == "stand-in"
        reply.register("reg-test", lambda m: f"registered: {m.text}")  # a plain function: on a thread
        assert await reply.answer(message, default="stand-in") == "registered: hi"
        reply.install("reg-test", reply.Hook(lambda m: "configured", "cfg:fn"))
        assert await reply.answer(message, default="stand-in") == "configured"
        reply.install("reg-test", None)  # a later start without the key: the registered one again
        assert await reply.answer(message, default="stand-in") == "registered: hi"
    finally:
        reply.install("reg-test", None)
        reply._registered.pop("reg-test", None)

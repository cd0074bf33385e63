"""The recipe's adapter (docs/examples/toy_adapter.py) runs as an external plugin in a real
gateway process, answers each message once across a SIGKILL in the middle of its work, keeps
its quota across a restart only with the store, and stays short."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from chatstate.gateway import sdk
from chatstate.gateway.sim.harness import GatewayHarness, GatewayStartError

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
DOC = EXAMPLES.parent / "migrating-an-adapter.md"
SECRET = "toy-secret"
LEASE_MS = 500  # a dead gateway's claim is taken over after this
sys.path.insert(0, str(EXAMPLES))
from toy_adapter import sign  # noqa: E402


class ToyApi:
    """Toy's far end, written from the wire the example's docstring states: it records each
    answer, and can be told to hang once it has recorded one (the bot's post took effect but
    the bot never hears back)."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []
        self.hang = False
        self.changed = asyncio.Condition()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def post(self, request: web.Request) -> web.Response:
        answer = await request.json()
        async with self.changed:
            self.answers.append(answer)
            self.changed.notify_all()
        if self.hang:
            await self._release.wait()
        return web.json_response({"id": f"m{len(self.answers)}"})

    async def find(self, request: web.Request) -> web.Response:
        found = [a for a in self.answers if a["reply_to"] == request.query["reply_to"]]
        return web.json_response({"messages": found})

    async def wait_for(self, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.answers) >= count), 30)

    def to(self, message_id: str) -> list[str]:
        return [a["text"] for a in self.answers if a["reply_to"] == message_id]

    async def __aenter__(self) -> ToyApi:
        app = web.Application()
        app.add_routes([web.post("/api/messages", self.post), web.get("/api/messages", self.find)])
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/api"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


def harness(
    tmp_path: Path, mode: str, api_url: str, *, trusted: bool = True, per_user: int = 5, **extra: Any
) -> GatewayHarness:
    table = {"secret": SECRET, "api_url": api_url, "questions_per_user": per_user, "lease_ms": LEASE_MS, **extra}
    return GatewayHarness(
        modes={"toy": mode},
        adapters={"toy": table},
        config={"external_plugins": ["toy_adapter:ToyPlugin"], "trusted_plugins": ["toy"] if trusted else []},
        pythonpath=[EXAMPLES, tmp_path],
        state_dir=tmp_path / "state",
    )


async def send(gw: GatewayHarness, message_id: str, text: str, *, user: str = "alice", secret: str = SECRET) -> Any:
    body = json.dumps({"id": message_id, "user": user, "channel": "c1", "text": text}).encode()
    headers = {"X-Toy-Signature": sign(secret, body), "Content-Type": "application/json"}
    async with gw.http.post(f"{gw.gateway_url}/toy/events", data=body, headers=headers) as resp:
        return resp.status, await resp.text()


async def deliver(gw: GatewayHarness, message_id: str, text: str, *, user: str = "alice") -> str:
    """Send as Toy does: the same id again until a 2xx; the 2xx's body."""
    for _ in range(100):
        status, body = await send(gw, message_id, text, user=user)
        if status == 200:
            return str(body)
        assert status == 503, (status, body)  # the dead gateway's lease is still live
        await asyncio.sleep(0.1)
    raise AssertionError(f"{message_id} was never acknowledged")


@pytest.fixture
async def api() -> AsyncIterator[ToyApi]:
    async with ToyApi() as far_end:
        yield far_end


@pytest.mark.parametrize("mode, answers", [("store", 1), ("legacy", 2)])
async def test_one_answer_per_message_across_a_sigkill_mid_work(
    tmp_path: Path, api: ToyApi, mode: str, answers: int
) -> None:
    """The gateway is killed with three messages in flight, each answer recorded by Toy and not
    yet marked done; Toy sends them again to the restarted gateway. With the store each
    takeover's check finds its answer (one answer each, counted against the quota); legacy mode
    answers again."""
    users = {"m-1": "alice", "m-2": "bob", "m-3": "carol"}
    async with harness(tmp_path, mode, api.url, per_user=2) as gw:
        api.hang = True
        first = [asyncio.create_task(send(gw, m, f"is prod down? ({m})", user=u)) for m, u in users.items()]
        await api.wait_for(len(users))
        await gw.restart(kind="kill")
        for task in first:
            with pytest.raises(aiohttp.ClientError):
                await task  # Toy never got its 2xx, so it sends the message again
        api.hang = False
        for m, u in users.items():
            assert await deliver(gw, m, f"is prod down? ({m})", user=u) == (
                "already_done" if mode == "store" else "answered"
            )
            assert api.to(m) == [f"you asked: is prod down? ({m})"] * answers
        if mode == "store":
            assert await deliver(gw, "m-4", "and now?") == "answered"
            await deliver(gw, "m-5", "still?")
            assert api.to("m-4") == ["you asked: and now?"]
            assert api.to("m-5")[0].startswith("You asked 2 this hour; ask again in ")
            assert await deliver(gw, "m-4", "and now?") == "already_done"  # a late duplicate
            assert len(api.answers) == 5


@pytest.mark.parametrize("mode, refused", [("store", True), ("legacy", False)])
async def test_the_quota_survives_sigkill_only_with_the_store(
    tmp_path: Path, api: ToyApi, mode: str, refused: bool
) -> None:
    async with harness(tmp_path, mode, api.url, per_user=2) as gw:
        for n in (1, 2):
            assert await deliver(gw, f"q-{n}", f"question {n}") == "answered"
        await gw.restart(kind="kill")
        await deliver(gw, "q-3", "question 3")
        assert api.to("q-3")[0].startswith("You asked 2") is refused
        await deliver(gw, "q-4", "from bob", user="bob")  # one user's quota is nobody else's
        assert api.to("q-4") == ["you asked: from bob"]


async def test_the_users_reply_hook_writes_the_answers(tmp_path: Path, api: ToyApi) -> None:
    """`reply = "module:function"` in [adapters.toy]: the hook's text is sent; None sends nothing."""
    (tmp_path / "oncall.py").write_text(
        "def answer(message):\n"
        "    return None if message.text == 'thanks' else f'{message.platform}/{message.user}: paging on-call'\n"
    )
    async with harness(tmp_path, "store", api.url, reply="oncall:answer") as gw:
        assert await deliver(gw, "h-1", "is prod down?") == "answered"
        assert await deliver(gw, "h-2", "thanks") == "ignored"
    assert api.to("h-1") == ["toy/alice: paging on-call"] and api.to("h-2") == []


async def test_a_bad_signature_or_body_touches_no_state(tmp_path: Path, api: ToyApi) -> None:
    async with harness(tmp_path, "store", api.url) as gw:
        assert (await send(gw, "x-1", "forged", secret="wrong"))[0] == 401
        body = b'{"id": "", "user": "alice", "channel": "c1", "text": "x"}'
        headers = {"X-Toy-Signature": sign(SECRET, body)}
        async with gw.http.post(f"{gw.gateway_url}/toy/events", data=body, headers=headers) as resp:
            assert resp.status == 400
        assert await deliver(gw, "x-1", "real") == "answered"  # the 401 claimed nothing
        assert api.to("x-1") == ["you asked: real"]
        status, health = await gw.healthz()
        toy = health["adapters"]["toy"]
        assert (toy["status"], toy["in_flight"], toy["state"]["toy.events"]["mode"]) == ("ok", 0, "store")


async def test_an_untrusted_external_plugin_cannot_get_a_store(tmp_path: Path) -> None:
    with pytest.raises(GatewayStartError) as info:
        async with harness(tmp_path, "store", "http://127.0.0.1:9/api", trusted=False):
            pass
    assert info.value.exit_code == 2
    assert "trusted_plugins" in info.value.log_tail


def test_the_toy_adapter_fits_in_150_lines() -> None:
    assert len((EXAMPLES / "toy_adapter.py").read_text().splitlines()) <= 150


def test_the_recipe_and_the_toy_adapter_number_their_steps_alike() -> None:
    """Each `# N. Title` in the toy adapter is the page's `### N. Title`, and every step is there."""
    steps = dict(re.findall(r"^### (\d+)\. (.+)$", DOC.read_text(), re.M))
    assert list(steps) == [str(n) for n in range(1, len(steps) + 1)]
    toy = re.findall(r"^\s*# (\d+)\. ([^:]+?)(?::|$)", (EXAMPLES / "toy_adapter.py").read_text(), re.M)
    assert sorted({n for n, _ in toy}, key=int) == list(steps)
    for number, title in toy:
        assert steps[number].startswith(title.strip()), (number, title, steps[number])


def test_the_recipe_names_only_files_modules_and_sdk_names_that_exist() -> None:
    """A path in backticks is a file here, a dotted `chatstate.` name a module, and every name of
    the page's SDK table is exported by `chatstate.gateway.sdk`."""
    root, text = EXAMPLES.parents[1], DOC.read_text()
    for path in re.findall(r"`((?:gateway|adapters|docs|tests|fixtures)/[\w/.-]+\.(?:py|md|toml))`", text):
        assert "<" in path or (root / path).is_file(), path
    for module in re.findall(r"`(?:from )?(chatstate(?:\.\w+)+)", text):
        assert importlib.util.find_spec(module) is not None, module
    table = text.split("| name | what |", 1)[1].split("\n\n", 1)[0]
    names = {n for cell in re.findall(r"^\| ([^|]+) \|", table, re.M) for n in re.findall(r"`(\w+)`", cell)}
    assert names and names <= set(sdk.__all__), names - set(sdk.__all__)


def test_the_docs_cite_only_files_in_the_repository() -> None:
    """Adapter-author docs must not send readers to design notes kept outside the repository."""
    root = EXAMPLES.parents[1]
    for page in [DOC, *sorted((root / "docs").rglob("*.md")), root / "README.md"]:
        assert "DESIGN.md" not in page.read_text(), page

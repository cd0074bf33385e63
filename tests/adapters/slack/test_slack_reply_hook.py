"""The user's reply hook inside the Slack adapter's exactly-once work: a gateway SIGKILLed while
the hook runs gives one answer after the restart (the claim wraps the hook), and that answer is
the hook's text, not the echo."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from slack_helpers import stored
from test_slack_exactly_once import quiet

from chatstate.adapters.slack.state import STARTERS_NAMESPACE, THREADS_NAMESPACE
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.slack import SlackSimulator

HOOK = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path


    def answer(message):
        mark = Path(os.environ["HOOK_MARK"])
        if not mark.exists():  # the first run is killed mid-hook
            mark.write_text(str(os.getpid()))
            time.sleep(60)
        return f"my bot heard {message.user}: {message.text}"
    """
)


async def until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait for a file another process writes (no event to wait on across processes)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the hook never started"
        await asyncio.sleep(0.05)


async def test_a_sigkill_mid_hook_still_gives_exactly_one_answer(tmp_path: Path) -> None:
    folder = tmp_path / "bot"
    folder.mkdir()
    (folder / "slack_logic.py").write_text(HOOK)
    mark = tmp_path / "hook-started"
    slack = SlackSimulator(
        extra_config={
            "reply": "slack_logic:answer",
            "reply_timeout_s": 120,
            "event_lease_ms": 1000,
            "ack_budget_s": 0.2,
        }
    )
    async with GatewayHarness(
        [slack], state_dir=tmp_path / "state", pythonpath=[folder], env={"HOOK_MARK": str(mark)}
    ) as gw:
        event = slack.mention_event("deploy please")
        delivery = await slack.deliver(event)
        assert delivery.status == 200  # acked before the hook finished: the event is held
        await until(mark.exists)
        assert await gw.kill() == -9  # mid-hook
        await gw.start()
        posts = await slack.wait_for_posts(1, timeout=30)
        await quiet(gw.database_path, slack)
        assert [p["text"] for p in slack.posts()] == [f"my bot heard {event['event']['user']}: deploy please"], posts


SILENT = 'def answer(message):\n    return None if "quiet" in message.text else f"heard {message.text}"\n'


async def test_a_hook_that_says_nothing_leaves_a_new_thread_unfollowed(tmp_path: Path) -> None:
    """The thread was recorded and counted with the claim, before the hook ran: saying nothing
    puts both back with the done mark, so the bot does not answer untagged follow-ups there."""
    folder = tmp_path / "bot"
    folder.mkdir()
    (folder / "slack_silent.py").write_text(SILENT)
    slack = SlackSimulator(extra_config={"reply": "slack_silent:answer"})
    async with GatewayHarness([slack], state_dir=tmp_path / "state", pythonpath=[folder]) as gw:
        event = slack.mention_event("quiet please")
        assert (await slack.deliver(event)).body == "ignored"
        assert stored(gw.database_path, THREADS_NAMESPACE) == stored(gw.database_path, STARTERS_NAMESPACE) == []
        follow_up = slack.message_event("and now?", thread_ts=event["event"]["ts"])
        assert (await slack.deliver(follow_up)).body == "ignored"
        assert slack.posts() == []
        answered = slack.mention_event("speak up")
        assert (await slack.deliver(answered)).body == "replied"
        assert [p["text"] for p in slack.posts()] == ["heard speak up"]
        assert (
            len(stored(gw.database_path, THREADS_NAMESPACE)) == len(stored(gw.database_path, STARTERS_NAMESPACE)) == 1
        )

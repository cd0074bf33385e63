"""The demo traffic at scale: many conversations on all four adapters against ONE real gateway.

    python benchmarks/traffic_bench.py [--events 10000] [--quick] [--concurrency 16] [--json]

One gateway subprocess (keyed stores on SQLite, the demo's config) started by `GatewayHarness`
against the four platform simulators, all on loopback. The events are the demo's
conversations, many times over, interleaved across the adapters in proportion to their share:

| adapter | one conversation (events) |
|---|---|
| slack   | @mention (new thread) -> untagged follow-up in that thread (2) |
| discord | /panel -> Refresh (reusable) -> Approve (single-use) -> Approve again by someone else (must say "already used") -> Feedback (opens the modal) -> modal submit (6) |
| teams   | @mention -> reply to the bot's answer (2) |
| matrix  | `!approve <action>` -> approver reacts with the allow-once emoji on the prompt (2) |

At most `--concurrency` events are in flight (one worker per slot, each playing one
conversation at a time); the run stops at `--events` events or after `--timeout-s`, whichever
comes first. The events are split evenly across the four adapters (a conversation cut short
by the count just plays its first steps).

Latency, per event:
- HTTP adapters (Slack, Discord, Teams): from just before the request is sent until both its
  response has been read and, where the event makes the bot post (Slack reply, Discord panel
  message, Teams reply), the simulator has recorded that post. All three post inside the request,
  so this is the request time unless the Slack adapter had to ack early.
- Matrix: from injecting the event into the homeserver simulator until it records the bot's last
  resulting send (request: the prompt and its three seed reactions; reaction: the outcome).

Store ops/s comes from the gateway's /healthz `store_ops` (store operations started in the
gateway process), read before and after the measured run. Correctness is checked at the end
from the simulators' own records, never from the gateway's account: every event answered exactly
once with the expected answer. The exit code is 0 only when every event was answered correctly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatstate.adapters.discord.handlers import ALREADY_USED, EXPIRED  # noqa: E402
from chatstate.adapters.matrix import platform as mx  # noqa: E402  (txn ids: how a send is traced to its cause)
from chatstate.gateway.sim.base import Record  # noqa: E402
from chatstate.gateway.sim.discord import ALICE as D_ALICE  # noqa: E402
from chatstate.gateway.sim.discord import BOB as D_BOB  # noqa: E402
from chatstate.gateway.sim.discord import DiscordSimulator, Reply, fixture  # noqa: E402
from chatstate.gateway.sim.harness import GatewayHarness  # noqa: E402
from chatstate.gateway.sim.matrix import SERVER_NAME, MatrixHomeserver  # noqa: E402
from chatstate.gateway.sim.slack import EVENTS_PATH, SlackSimulator  # noqa: E402
from chatstate.gateway.sim.teams import TeamsSimulator  # noqa: E402

ADAPTERS = ("slack", "discord", "teams", "matrix")
DEFAULT_EVENTS = 10_000
QUICK_EVENTS = 1_000
DEFAULT_CONCURRENCY = 16  # events in flight
DEFAULT_TIMEOUT_S = 900.0  # the whole measured run
EVENT_TIMEOUT_S = 30.0  # one event's answer (well past Slack's 3 s and any sane p99)
ROOM = f"!ops:{SERVER_NAME}"
M_ALICE = f"@alice:{SERVER_NAME}"
M_BOB = f"@bob:{SERVER_NAME}"
ALLOW_ONCE = mx.EMOJI["allow-once"]


# -- simulators that tell the benchmark when the bot's sends arrive --------------------------------
class Waiters:
    """Futures keyed by what identifies a bot send (an event id, a txn id), resolved with the
    perf_counter time the simulator recorded it. Keyed lookups keep a 10,000-event run O(n)."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[float]] = {}
        self.seen: Counter[str] = Counter()

    def future(self, key: str) -> asyncio.Future[float]:
        fut = self._futures.get(key)
        if fut is None:
            fut = self._futures[key] = asyncio.get_running_loop().create_future()
        return fut

    def arrived(self, key: str) -> None:
        self.seen[key] += 1
        fut = self.future(key)
        if not fut.done():
            fut.set_result(time.perf_counter())


class BenchSlack(SlackSimulator):
    def __init__(self) -> None:
        super().__init__()
        self.waiters = Waiters()

    async def record(self, kind: str, payload: dict[str, Any]) -> Record:
        rec = await super().record(kind, payload)
        event_id = ((payload.get("metadata") or {}).get("event_payload") or {}).get("event_id")
        if event_id:
            self.waiters.arrived(str(event_id))
        return rec


class BenchTeams(TeamsSimulator):
    def __init__(self) -> None:
        super().__init__()
        self.waiters = Waiters()
        self.reply_to: dict[str, dict[str, Any]] = {}  # incoming activity id -> the bot's first reply

    async def record(self, kind: str, payload: dict[str, Any]) -> Record:
        rec = await super().record(kind, payload)
        if kind == "activity" and payload.get("reply_to_id"):
            self.reply_to.setdefault(str(payload["reply_to_id"]), payload)
            self.waiters.arrived(str(payload["reply_to_id"]))
        return rec


class BenchDiscord(DiscordSimulator):
    def __init__(self) -> None:
        super().__init__()
        self.waiters = Waiters()

    async def record(self, kind: str, payload: dict[str, Any]) -> Record:
        rec = await super().record(kind, payload)
        if kind == "message_create":
            self.waiters.arrived(str(payload["message"]["id"]))
        return rec


class BenchMatrix(MatrixHomeserver):
    def __init__(self) -> None:
        super().__init__()
        self.waiters = Waiters()
        self.event_of_txn: dict[str, str] = {}  # the bot's txn id -> the event it created

    async def record(self, kind: str, payload: dict[str, Any]) -> Record:
        rec = await super().record(kind, payload)
        if kind == "room_send":
            self.event_of_txn.setdefault(str(payload["txn_id"]), str(payload["event_id"]))
            self.waiters.arrived(str(payload["txn_id"]))
        return rec


# -- one event, one conversation -------------------------------------------------------------------
@dataclass
class Sample:
    adapter: str
    step: str
    started: float  # perf_counter
    latency_ms: float
    ok: bool
    detail: str = ""


@dataclass
class Run:
    """What the workers measured; shared by every conversation."""

    http: aiohttp.ClientSession
    slack: BenchSlack
    discord: BenchDiscord
    teams: BenchTeams
    matrix: BenchMatrix
    teams_token: str
    samples: list[Sample] = field(default_factory=list)
    warmup: list[Sample] = field(default_factory=list)  # checked for correctness, not timed
    sent: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # adapter -> ids sent
    matrix_reactions: dict[str, str] = field(default_factory=dict)  # reaction event id -> its request

    def add(self, adapter: str, step: str, t0: float, t1: float, ok: bool, detail: str = "") -> None:
        self.samples.append(Sample(adapter, step, t0, (t1 - t0) * 1000, ok, detail))


async def _at(fut: asyncio.Future[float]) -> float:
    return await asyncio.wait_for(asyncio.shield(fut), EVENT_TIMEOUT_S)


# Slack: the bot answers inside the request unless it runs past its ack budget ("accepted").
async def slack_post(run: Run, envelope: dict[str, Any]) -> tuple[int, str]:
    sim = run.slack
    body = json.dumps(envelope).encode()
    assert sim.gateway_url
    async with run.http.post(sim.gateway_url + EVENTS_PATH, data=body, headers=sim.signed_headers(body)) as resp:
        return resp.status, await resp.text()


async def slack_conversation(run: Run, steps: int) -> None:
    sim = run.slack
    root = ""
    for i in range(steps):
        if i == 0:
            envelope, step = sim.mention_event("can you look at the deploy?"), "mention"
            root = str(envelope["event"]["ts"])
        else:
            envelope, step = sim.message_event("any news?", thread_ts=root), "follow-up"
        event_id = str(envelope["event_id"])
        run.sent["slack"].append(event_id)
        posted = sim.waiters.future(event_id)
        t0 = time.perf_counter()
        status, text = await slack_post(run, envelope)
        t_resp = time.perf_counter()
        if status != 200 or text not in ("replied", "accepted"):
            run.add("slack", step, t0, t_resp, False, f"{status} {text}")
            return
        t1 = max(t_resp, await _at(posted))
        run.add("slack", step, t0, t1, True)


# Discord: every interaction is answered in its HTTP response; /panel posts the panel first.
async def discord_conversation(run: Run, steps: int) -> None:
    sim = run.discord
    message: dict[str, Any] = {}
    modal: dict[str, Any] = {}

    async def deliver(payload: dict[str, Any]) -> Reply:
        run.sent["discord"].append(str(payload["id"]))
        return await sim.deliver(payload)

    for i in range(steps):
        t0 = time.perf_counter()
        if i == 0:
            data = fixture("application_command")["data"]
            data["options"] = []
            # Not DiscordSimulator.post_panel: it returns the `before`-th recorded message, which
            # under concurrency can be another conversation's panel. The reply names the message.
            reply = await deliver(sim.interaction("application_command", user_id=D_ALICE, data=data))
            ok = reply.status == 200 and reply.content.startswith("Panel posted (message ")
            if ok:
                message_id = reply.content.removeprefix("Panel posted (message ").rstrip(").")
                t1 = max(time.perf_counter(), await _at(sim.waiters.future(message_id)))
                message = sim.messages[message_id]
            else:
                t1 = time.perf_counter()
            step = "panel"
        elif i == 1:
            reply = await deliver(sim.click_payload(message, "Refresh", user_id=D_ALICE))
            t1, step = time.perf_counter(), "reusable click"
            ok = reply.status == 200 and reply.type == 7 and "status refreshed" in reply.content
        elif i == 2:
            reply = await deliver(sim.click_payload(message, "Approve", user_id=D_ALICE))
            t1, step = time.perf_counter(), "single-use click"
            ok = reply.status == 200 and reply.content.startswith("Approved by")
        elif i == 3:
            reply = await deliver(sim.click_payload(message, "Approve", user_id=D_BOB))
            # Consumed by the click before: "expired" (the entry is gone), or "already used"
            # when it lost a race for it; never a second "Approved by".
            t1, step = time.perf_counter(), "single-use click again"
            ok = reply.status == 200 and reply.content in (EXPIRED, ALREADY_USED)
        elif i == 4:
            reply = await deliver(sim.click_payload(message, "Feedback", user_id=D_ALICE))
            t1, step = time.perf_counter(), "modal open"
            ok = reply.status == 200 and reply.type == 9 and bool(reply.data.get("custom_id"))
            modal = reply.data
        else:
            rows = [
                {
                    "type": 1,
                    "components": [
                        {"type": 4, "custom_id": c["custom_id"], "value": "ship it"} for c in row["components"]
                    ],
                }
                for row in modal["components"]
            ]
            payload = sim.interaction(
                "modal_submit", user_id=D_ALICE, data={"custom_id": modal["custom_id"], "components": rows}
            )
            payload["message"], payload["channel_id"] = message, message["channel_id"]
            reply = await deliver(payload)
            t1, step = time.perf_counter(), "modal submit"
            ok = reply.status == 200 and "feedback received" in reply.content
        run.add("discord", step, t0, t1, ok, "" if ok else f"{reply.status} {reply.body}")
        if not ok:
            return


# Teams: the gateway answers the activity after the turn, so the bot's reply is inside it.
async def teams_post(run: Run, activity: dict[str, Any]) -> int:
    assert run.teams.gateway_url
    headers = {"Authorization": f"Bearer {run.teams_token}"}
    async with run.http.post(run.teams.gateway_url + "/api/messages", json=activity, headers=headers) as resp:
        await resp.read()
        return resp.status


async def teams_conversation(run: Run, steps: int) -> None:
    sim = run.teams
    bot_message = ""
    for i in range(steps):
        if i == 0:
            activity, step, expect = sim.activity("message_mention"), "mention", "[mention]"
        else:
            activity, step, expect = (
                sim.activity("message_reply", reply_to_id=bot_message),
                "reply to bot",
                "[reply_to_bot]",
            )
        activity_id = str(activity["id"])
        run.sent["teams"].append(activity_id)
        answered = sim.waiters.future(activity_id)
        t0 = time.perf_counter()
        status = await teams_post(run, activity)
        t_resp = time.perf_counter()
        if status != 200:
            run.add("teams", step, t0, t_resp, False, f"HTTP {status}")
            return
        t1 = max(t_resp, await _at(answered))
        reply = sim.reply_to[activity_id]
        ok = str(reply.get("text", "")).startswith(expect)
        run.add("teams", step, t0, t1, ok, "" if ok else repr(reply.get("text")))
        if not ok:
            return
        bot_message = str(reply["id"])


# Matrix: events go in through the homeserver; the bot long-polls /sync and sends back.
async def matrix_conversation(run: Run, steps: int, n: int | str) -> None:
    sim = run.matrix
    request_id = ""
    prompt_id = ""
    for i in range(steps):
        t0 = time.perf_counter()
        if i == 0:
            request_id = await sim.send_message(ROOM, M_ALICE, f"!approve deploy-{n}")
            run.sent["matrix"].append(request_id)
            prompt = sim.waiters.future(mx.txn_id("prompt", request_id))
            t_prompt = await _at(prompt)
            prompt_id = sim.event_of_txn[mx.txn_id("prompt", request_id)]
            seeds = [sim.waiters.future(mx.txn_id(f"seed-{d}", prompt_id)) for d in mx.DECISIONS]
            t1 = max([t_prompt, *[await _at(s) for s in seeds]])
            run.add("matrix", "approval request", t0, t1, True, f"prompt {1000 * (t_prompt - t0):.3f}")
        else:
            reaction_id = await sim.react(ROOM, M_BOB, prompt_id, ALLOW_ONCE)
            run.sent["matrix"].append(reaction_id)
            run.matrix_reactions[reaction_id] = request_id
            approval = mx.approval_id(ROOM, request_id)
            t1 = await _at(sim.waiters.future(mx.txn_id("outcome", approval)))
            run.add("matrix", "reaction", t0, t1, True)


CONVERSATION_EVENTS = {"slack": 2, "discord": 6, "teams": 2, "matrix": 2}


def plan(total: int) -> list[tuple[str, int, int | str]]:
    """(adapter, steps, n) per conversation: `total` events split evenly across the adapters,
    interleaved so each adapter's conversations are spread over the whole run."""
    per = [total // len(ADAPTERS) + (1 if i < total % len(ADAPTERS) else 0) for i in range(len(ADAPTERS))]
    keyed: list[tuple[float, str, int, int]] = []
    for adapter, events in zip(ADAPTERS, per):
        size = CONVERSATION_EVENTS[adapter]
        count = -(-events // size)
        for n in range(count):
            steps = min(size, events - n * size)
            keyed.append(((n + 0.5) / count, adapter, steps, n))
    keyed.sort()
    return [(a, s, n) for _, a, s, n in keyed]


async def play(run: Run, conversations: list[tuple[str, int, int | str]], concurrency: int, deadline: float) -> bool:
    """Play every conversation, `concurrency` at a time; False if the deadline cut the run short."""
    queue: asyncio.Queue[tuple[str, int, int | str]] = asyncio.Queue()
    for c in conversations:
        queue.put_nowait(c)

    async def worker() -> None:
        while not queue.empty() and time.monotonic() < deadline:
            adapter, steps, n = queue.get_nowait()
            try:
                if adapter == "slack":
                    await slack_conversation(run, steps)
                elif adapter == "discord":
                    await discord_conversation(run, steps)
                elif adapter == "teams":
                    await teams_conversation(run, steps)
                else:
                    await matrix_conversation(run, steps, n)
            except Exception as exc:  # counted as a wrong answer; the run goes on
                run.add(
                    adapter, "error", time.perf_counter(), time.perf_counter(), False, f"{type(exc).__name__}: {exc}"
                )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return queue.empty()


# -- correctness from the simulators' records ------------------------------------------------------
def verify(run: Run) -> dict[str, dict[str, Any]]:
    """Per adapter: events sent, events answered exactly once, and what went wrong (from records)."""
    out: dict[str, dict[str, Any]] = {}

    # Slack: one chat.postMessage per event, naming the event in its metadata.
    posts = Counter(((p.get("metadata") or {}).get("event_payload") or {}).get("event_id") for p in run.slack.posts())
    sent = run.sent["slack"]
    out["slack"] = _tally(sent, posts, extra=sum(v for k, v in posts.items() if k not in set(sent)))

    # Discord: one recorded response per interaction; one posted message per /panel.
    responses = Counter(str(r.payload["request"]["id"]) for r in run.discord.recorded("interaction_response"))
    sent = run.sent["discord"]
    panels = sum(1 for s in [*run.warmup, *run.samples] if s.adapter == "discord" and s.step == "panel")
    messages = len(run.discord.recorded("message_create"))
    out["discord"] = _tally(sent, responses, extra=max(0, messages - panels))

    # Teams: one bot activity replying to each delivered activity.
    replies = Counter(str(p.get("reply_to_id")) for p in run.teams.sent())
    sent = run.sent["teams"]
    out["teams"] = _tally(sent, replies, extra=sum(v for k, v in replies.items() if k not in set(sent)))

    # Matrix: per request one prompt and one seed reaction per decision; per reaction one outcome
    # (allow-once). The homeserver answers a repeated txn id with the first event and records a
    # `room_send_retry`, so a re-send counts as extra, not as a second answer.
    sim = run.matrix
    by_txn = Counter(str(p["txn_id"]) for p in sim.sent())
    answers: Counter[str] = Counter()
    for event_id in run.sent["matrix"]:
        request_id = run.matrix_reactions.get(event_id)
        if request_id is None:  # an approval request
            prompt_txn = mx.txn_id("prompt", event_id)
            prompt_id = sim.event_of_txn.get(prompt_txn)
            seeds = [by_txn[mx.txn_id(f"seed-{d}", prompt_id or "")] for d in mx.DECISIONS]
            answers[event_id] = by_txn[prompt_txn] if seeds == [1] * len(mx.DECISIONS) else max(seeds, default=0) or 2
        else:
            answers[event_id] = by_txn[mx.txn_id("outcome", mx.approval_id(ROOM, request_id))]
    decided = [p for p in sim.sent("m.room.message") if "decision" in p["content"].get(mx.APPROVAL_FIELD, {})]
    not_allow_once = sum(1 for p in decided if p["content"][mx.APPROVAL_FIELD]["decision"] != "allow-once")
    expired = sum(1 for p in sim.sent("m.room.message") if p["content"].get("body") == mx.EXPIRED_TEXT)
    retries = len(sim.recorded("room_send_retry"))
    out["matrix"] = _tally(run.sent["matrix"], answers, extra=not_allow_once + expired + retries)

    bad_samples = Counter(s.adapter for s in [*run.warmup, *run.samples] if not s.ok)
    for adapter, row in out.items():
        row["wrong_answers"] = bad_samples[adapter]
        row["ok"] = row["exactly_once"] == row["sent"] and row["extra"] == 0 and row["wrong_answers"] == 0
    return out


def _tally(sent: list[str], answers: Counter[Any], *, extra: int) -> dict[str, Any]:
    counts = Counter(answers.get(s, 0) for s in sent)
    return {
        "sent": len(sent),
        "exactly_once": counts.get(1, 0),
        "unanswered": counts.get(0, 0),
        "more_than_once": sum(v for k, v in counts.items() if k > 1),
        "extra": extra,
    }


# -- numbers ---------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def cpu_s(pid: int | None) -> float:
    """User+system CPU seconds of a process (all its threads), from /proc; 0 off Linux."""
    try:
        fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


async def bench(events: int, concurrency: int, timeout_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    sims = (BenchSlack(), BenchDiscord(), BenchTeams(), BenchMatrix())
    slack, discord, teams, matrix = sims
    # every Matrix request comes from one user, up to `concurrency` of them open at once: lift the
    # per-requester quota (default 5) so the bench measures throughput, not refusals
    quota = {"matrix": {"max_pending_per_requester": max(concurrency, 5)}}
    async with GatewayHarness(list(sims), modes="store", adapters=quota) as gw:
        say(f"gateway pid {gw.pid} on {gw.gateway_url}, state {gw.database_path}")
        connector = aiohttp.TCPConnector(limit=concurrency * 2)
        async with aiohttp.ClientSession(connector=connector) as http:
            # One channel token for the run, as a real Bot Connector reuses its token for an hour.
            run = Run(http, slack, discord, teams, matrix, teams_token=teams.token())
            # Warm up (connections, JWKS fetch, first sync); these events are checked, not timed.
            await play(
                run, [(a, CONVERSATION_EVENTS[a], "warm-up") for a in ADAPTERS], len(ADAPTERS), time.monotonic() + 60
            )
            run.warmup, run.samples = run.samples, []
            conversations = plan(events)
            _, before = await gw.healthz()
            cpu0, gw_cpu0, load0 = cpu_s(None), cpu_s(gw.pid), loadavg()
            say(f"warm-up: {len(run.warmup)} events; measuring {events} events, {concurrency} in flight, load {load0}")
            t0 = time.perf_counter()
            finished = await play(run, conversations, concurrency, time.monotonic() + timeout_s)
            elapsed = time.perf_counter() - t0
            cpu1, gw_cpu1, load1 = cpu_s(None), cpu_s(gw.pid), loadavg()
            status, after = await gw.healthz()
            correctness = verify(run)
    ops_before, ops_after = before.get("store_ops", {}), after.get("store_ops", {})
    ops = {
        k: ops_after.get(k, 0) - ops_before.get(k, 0)
        for k in sorted(ops_after)
        if ops_after.get(k, 0) != ops_before.get(k, 0)
    }
    per: dict[str, dict[str, Any]] = {}
    for adapter in ADAPTERS:
        ss = [s for s in run.samples if s.adapter == adapter and s.step != "error"]
        lat = [s.latency_ms for s in ss]
        span = (max(s.started + s.latency_ms / 1000 for s in ss) - min(s.started for s in ss)) if ss else 0.0
        per[adapter] = {
            "events": len(ss),
            "events_per_s": len(ss) / span if span else 0.0,
            "p50_ms": pct(lat, 0.50),
            "p99_ms": pct(lat, 0.99),
            "span_s": span,
        }
        if adapter == "matrix":
            prompt = [float(s.detail.split()[1]) for s in ss if s.step == "approval request"]
            per[adapter]["prompt_p50_ms"] = pct(prompt, 0.50)
            per[adapter]["prompt_p99_ms"] = pct(prompt, 0.99)
    measured = sum(p["events"] for p in per.values())
    all_lat = [s.latency_ms for s in run.samples if s.step != "error"]
    return {
        "events": measured,
        "requested_events": events,
        "finished": finished,
        "concurrency": concurrency,
        "elapsed_s": elapsed,
        "events_per_s": measured / elapsed if elapsed else 0.0,
        "p50_ms": pct(all_lat, 0.5),
        "p99_ms": pct(all_lat, 0.99),
        "adapters": per,
        "store_ops": ops,
        "store_ops_per_s": sum(ops.values()) / elapsed if elapsed else 0.0,
        "correctness": correctness,
        "ok": finished and all(c["ok"] for c in correctness.values()),
        "gateway_health": {"http": status, "status": after.get("status")},
        "cpu_s": {"gateway": gw_cpu1 - gw_cpu0, "driver_and_simulators": cpu1 - cpu0},
        "load": {"before": load0, "after": load1},
        "cpus": os.cpu_count(),
        "errors": [f"{s.adapter} {s.step}: {s.detail}" for s in [*run.warmup, *run.samples] if not s.ok][:10],
    }


def render(r: dict[str, Any]) -> str:
    lines = [
        f"{r['events']} events ({'all' if r['finished'] else 'CUT SHORT by --timeout-s'}), {r['concurrency']} in flight, "
        f"{r['elapsed_s']:.1f} s; load {r['load']['before']} -> {r['load']['after']} on {r['cpus']} CPUs",
        "",
        "| adapter | events | events/s | p50 ms | p99 ms | answered exactly once |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for adapter, p in r["adapters"].items():
        c = r["correctness"][adapter]
        verdict = f"{c['exactly_once']}/{c['sent']}" + (
            ""
            if c["ok"]
            else f" FAIL (unanswered {c['unanswered']}, twice+ {c['more_than_once']}, extra {c['extra']}, wrong {c['wrong_answers']})"
        )
        lines.append(
            f"| {adapter} | {p['events']} | {p['events_per_s']:.0f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {verdict} |"
        )
    total_sent = sum(c["sent"] for c in r["correctness"].values())
    total_once = sum(c["exactly_once"] for c in r["correctness"].values())
    lines.append(
        f"| **all** | {r['events']} | {r['events_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
        f"{total_once}/{total_sent}{'' if r['ok'] else ' FAIL'} |"
    )
    m = r["adapters"]["matrix"]
    ops = ", ".join(f"{k} {v}" for k, v in r["store_ops"].items())
    lines += [
        "",
        f"matrix approval request to prompt only: p50 {m['prompt_p50_ms']:.1f} ms, p99 {m['prompt_p99_ms']:.1f} ms",
        f"store ops: {sum(r['store_ops'].values())} in {r['elapsed_s']:.1f} s = {r['store_ops_per_s']:.0f} ops/s ({ops})",
        f"CPU seconds during the run: gateway {r['cpu_s']['gateway']:.1f}, driver + simulators "
        f"{r['cpu_s']['driver_and_simulators']:.1f}; gateway /healthz after: {r['gateway_health']['status']}",
        "correctness (simulators' records; warm-up events included): " + ("PASS" if r["ok"] else "FAIL"),
    ]
    if r["errors"]:
        lines += ["first errors:", *(f"  {e}" for e in r["errors"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=DEFAULT_EVENTS, help=f"events to send (default {DEFAULT_EVENTS:,})"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="events in flight (default 16)")
    parser.add_argument(
        "--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="stop sending after this long (default 900)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = parser.parse_args(argv)
    events = QUICK_EVENTS if args.quick else args.events
    if events < len(ADAPTERS) or args.concurrency < 1 or args.timeout_s <= 0:
        parser.error("--events must be >= 4, --concurrency >= 1, --timeout-s > 0")
    say = (lambda _t: None) if args.json else (lambda t: print(t, file=sys.stderr, flush=True))
    result = asyncio.run(bench(events, args.concurrency, args.timeout_s, say))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

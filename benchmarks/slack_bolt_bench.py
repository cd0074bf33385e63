"""Our Slack adapter against slack-bolt's `AsyncApp`, side by side on the same signed events.

    python benchmarks/slack_bolt_bench.py [--events 2000] [--quick] [--concurrency 16] [--before DIR]
    python benchmarks/slack_bolt_bench.py --instructions [--events 500] [--before DIR]

The servers are subprocesses answering the same Events API requests (signed `app_mention`s, each
a new thread, from 20 users) against one Slack simulator, which counts the replies: none lost,
none doubled, or the run fails. Bolt is the framework's documented default (`AsyncApp`, its
aiohttp server, `say` in the listener) with one shared keep-alive `aiohttp` session for its Web
API client, and keeps no state. A second bolt adds the least durable exactly-once needs: the
event's claim committed before bolt acknowledges the request, its done mark after `say`, through
one group-committing writer thread (the echo floor's, benchmarks/floor_server.py). The Slack
floor (benchmarks/slack_floor.py) does only what durable exactly-once needs, with no framework:
slack-sdk's signature check, the claim, the ack, the post, the done mark. Ours does
durable exactly-once on SQLite: the claim (with the new thread's row and quota count), and the
reply's state committed with the done mark. Ours runs twice: with every Slack namespace empty,
and with each filled to its cap before start (50,000 events, 5,000 threads, 2,000 quota rows).

Reported per server: events/s (from the first request to the last reply at the simulator),
server CPU per event (the process's user + system time over the run), the part of it on the
event loop's thread (the rest is other threads: our SQLite writer, the durable bolt's), and that
CPU as a ratio to bolt's, the durable bolt's and the floor's (medians of the per-round ratios).
`--instructions` instead runs each server alone under valgrind's callgrind and counts the
instructions per event (namespaces empty): steadier than CPU time on a shared machine, blind to
the kernel's part of a syscall (instructions_bench.py says more).
`--before DIR` adds our side run from another copy of the package, empty and full, to the same
rounds (before and after side by side): an installed copy, as `pip install --no-deps --target DIR
<checkout>` makes it (a checkout itself will not do: its `chatstate/` holds only the top module,
so the editable install would supply this tree's code). The servers take turns in each round, in
a new order each round (seeded: the same orders every run), so a noisy neighbour, a far end
slowing as it counts more replies, or what the server before leaves running, hits all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_support import check_before, load_average  # noqa: E402  (this directory)
from gateway_bench import cpu_seconds, thread_cpu  # noqa: E402  (this directory: the process CPU readers)
from instructions_bench import _dumped as dumped  # noqa: E402
from instructions_bench import _listening as listening  # noqa: E402

from chatstate import state  # noqa: E402
from chatstate.gateway.sim.harness import GatewayHarness, free_port  # noqa: E402
from chatstate.gateway.sim.slack import SlackSimulator  # noqa: E402

USERS = 20
BOLT = "bolt"
DURABLE_BOLT = "bolt + claim/done (durable)"
FLOOR = "floor: slack-sdk + claim/done"
CONFIG = {"threads_per_user": 1_000_000, "event_lease_ms": 60_000}  # no quota refusal, no lease running out
FULL = {  # namespace: (max_entries, default_ttl_ms), as the adapter opens them
    "slack.events": (50_000, 3_600_000),
    "slack.thread-participation": (5_000, 86_400_000),
    "slack.thread-starters": (2_000, 86_400_000),
}


def signed(sim: SlackSimulator, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, sim.signed_headers(body)


async def drive(sim: SlackSimulator, url: str, pid: int, events: int, concurrency: int) -> dict[str, float]:
    """Send `events` mentions to `url`, `concurrency` at a time; wait for every reply."""
    payloads = [sim.mention_event(f"job {i}", user=f"U{i % USERS:04d}") for i in range(events)]
    roots = {p["event"]["ts"] for p in payloads}
    posts_before = len(sim.posts())
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for p in payloads:
        queue.put_nowait(p)
    failures = 0

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal failures
        while not queue.empty():
            body, headers = signed(sim, queue.get_nowait())
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                failures += resp.status != 200

    cpu0, loop0, t0 = cpu_seconds(pid), loop_cpu(pid), time.monotonic()
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    await sim.wait_for_posts(posts_before + events, timeout=120)
    wall, cpu, loop = time.monotonic() - t0, cpu_seconds(pid) - cpu0, loop_cpu(pid) - loop0
    await asyncio.sleep(0.5)  # a late duplicate would land now
    per_root: dict[str, int] = {}
    for post in sim.posts():
        if post.get("thread_ts") in roots:
            per_root[post["thread_ts"]] = per_root.get(post["thread_ts"], 0) + 1
    lost, doubled = len(roots - set(per_root)), sum(1 for n in per_root.values() if n > 1)
    if failures or lost or doubled:
        raise SystemExit(f"{url}: {failures} non-200 answers, {lost} events lost, {doubled} answered twice")
    return {"events_per_s": events / wall, "cpu_us_per_event": cpu / events * 1e6, "loop_us": loop / events * 1e6}


def loop_cpu(pid: int) -> float:
    """CPU seconds of the process's event-loop thread (each server's loop runs on its main thread)."""
    return thread_cpu(pid).get("event loop", 0.0)


def fill(db: Path) -> None:
    """Fill each Slack namespace to its cap (rows of the shape the adapter writes)."""
    now = int(time.time() * 1000)
    for namespace, (cap, ttl) in FULL.items():
        store = state.open_keyed_store("slack", namespace, max_entries=cap, default_ttl_ms=ttl, path=db)
        try:
            for i in range(cap):
                store.register(f"TFILL:{namespace}:{i}", {"received_at": now, "done_at": now})
        finally:
            store.close()


async def serve_bolt(port: int, api_base_url: str, token: str, secret: str, durable_dir: str = "") -> None:
    """The bolt side (run in a subprocess): AsyncApp, one shared session, `say` in the listener.

    With `durable_dir`, bolt plus the least durable exactly-once can cost: the event's claim
    (a conditional insert) committed in a middleware, before bolt acknowledges the request (so
    an acknowledged event is never lost), its done mark after `say`, both awaited, through the
    floor server's group-committing writer thread (benchmarks/floor_server.py). No state beyond
    that: no thread rows, no quota, no cap on the table.
    """
    from aiohttp import web
    from floor_server import Writer
    from slack_bolt import BoltResponse
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    from chatstate.state._sqlite import SQL_CLAIM

    session = aiohttp.ClientSession()
    app = AsyncApp(signing_secret=secret, client=AsyncWebClient(token=token, base_url=api_base_url, session=session))
    writer = Writer(Path(durable_dir) / "bolt.sqlite", asyncio.get_running_loop()) if durable_dir else None
    version = iter(range(1, 2**62))

    def row(event_id: str, value: str, ttl_ms: int) -> tuple[object, ...]:
        now = time.time_ns() // 1_000_000
        return ("bolt", "events", event_id, now, value, now + ttl_ms, next(version))

    if writer is not None:

        @app.middleware
        async def claim(body: dict[str, Any], next: Callable[[], Awaitable[BoltResponse]]) -> BoltResponse:
            """Before bolt acknowledges: an event Slack must not lose is claimed durably first."""
            if "event_id" in body and not await writer.write(row(body["event_id"], '"claimed"', 60_000), SQL_CLAIM):
                return BoltResponse(status=200, body="")  # a live claim or a done mark: answered once
            return await next()

    @app.event("app_mention")
    async def mention(body: dict[str, Any], event: dict[str, Any], say: Any) -> None:
        text = event.get("text", "").split(">", 1)[-1].strip()
        await say(text=f"echo: {text}", thread_ts=event.get("thread_ts") or event["ts"])
        if writer is not None:
            await writer.write(row(body["event_id"], '"done"', 3_600_000))

    runner = web.AppRunner(app.web_app(path="/slack/events"), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def reference_command(sim: SlackSimulator, port: int, durable_dir: str = "", floor: bool = False) -> list[str]:
    """Bolt's command (with `durable_dir`, the durable bolt's) or, with `floor`, the Slack floor's (slack_floor.py)."""
    here = Path(__file__).resolve()
    script = [str(here.with_name("slack_floor.py"))] if floor else [str(here), "--serve-bolt"]
    return [sys.executable, *script, str(port), f"{sim.base_url}/api/", sim.bot_token, sim.signing_secret, durable_dir]


async def start_bolt(
    sim: SlackSimulator, durable_dir: str = "", floor: bool = False
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    command = reference_command(sim, port, durable_dir, floor)
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/slack/events"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.post(url, data=b"{}") as resp:
                    if resp.status:
                        return proc, url
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise SystemExit("bolt did not start")


async def main(args: argparse.Namespace) -> int:
    events = 300 if args.quick else args.events
    rounds = 1 if args.quick else args.rounds
    codes = {"ours": None} | ({"before": [str(Path(args.before).resolve())]} if args.before else {})
    names = [BOLT, DURABLE_BOLT, FLOOR] + [
        f"{code} ({fill_state})" for code in codes for fill_state in ("empty", "full")
    ]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    load_start = load_average()
    # the gateways run from `tmp`: `python -m chatstate` puts its working directory first on the
    # path, and from a checkout that is this tree's code whatever PYTHONPATH says
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        filled = Path(tmp) / "filled" / "plugin-state"
        filled.mkdir(parents=True)
        fill(filled / "state.sqlite")
        async with SlackSimulator(extra_config=CONFIG) as sim, contextlib.AsyncExitStack() as servers:
            bolt, bolt_url = await start_bolt(sim)
            durable, durable_url = await start_bolt(sim, durable_dir=tmp)
            floor, floor_url = await start_bolt(sim, durable_dir=tmp, floor=True)
            for proc in (bolt, durable, floor):  # on exit, last in first: terminate, then wait
                servers.push_async_callback(proc.wait)
                servers.callback(proc.terminate)
            sides = {
                BOLT: (bolt_url, bolt.pid),
                DURABLE_BOLT: (durable_url, durable.pid),
                FLOOR: (floor_url, floor.pid),
            }
            for code, pythonpath in codes.items():
                for fill_state in ("empty", "full"):
                    state_dir = Path(tmp) / f"{code}-{fill_state}"
                    if fill_state == "full":
                        shutil.copytree(filled, state_dir / "plugin-state")
                    gateway = GatewayHarness([sim], modes="store", state_dir=state_dir, pythonpath=pythonpath or ())
                    await servers.enter_async_context(gateway)
                    sides[f"{code} ({fill_state})"] = (f"{gateway.gateway_url}/slack/events", gateway.pid or 0)
            for url, pid in sides.values():  # warm-up: imports, connections, caches
                await drive(sim, url, pid, min(100, events), args.concurrency)
            order, shuffle = list(sides.items()), random.Random(0).shuffle
            for _ in range(rounds):  # a new order each round: no server always runs first, or after the same one
                shuffle(order)
                for name, (url, pid) in order:
                    results[name].append(await drive(sim, url, pid, events, args.concurrency))
    print(f"\n{events} events x {rounds} rounds, concurrency {args.concurrency}; before: {args.before or '-'}")
    print(f"load average at start {load_start}, at end {load_average()}")
    print("ratios: the median of the per-round ratios (the servers in a new order each round)")
    print(
        f"{'server':<28} {'events/s':>9} {'CPU us/event':>13} {'of it loop':>11} "
        f"{'ev/s vs bolt':>13} {'CPU vs bolt':>12} {'CPU vs durable':>15} {'CPU vs floor':>13}"
    )
    for name, rs in results.items():
        eps = statistics.median(r["events_per_s"] for r in rs)
        cpu = statistics.median(r["cpu_us_per_event"] for r in rs)
        loop = statistics.median(r["loop_us"] for r in rs)

        def ratio(key: str, base: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(r[key] / b[key] for r, b in zip(rs, results[base]))

        print(
            f"{name:<28} {eps:>9.0f} {cpu:>13.0f} {loop:>11.0f} {ratio('events_per_s', BOLT):>12.2f}x "
            f"{ratio('cpu_us_per_event', BOLT):>11.2f}x {ratio('cpu_us_per_event', DURABLE_BOLT):>14.2f}x "
            f"{ratio('cpu_us_per_event', FLOOR):>12.2f}x"
        )
    print("replies: every event answered exactly once on every server")
    return 0


async def count_instructions(args: argparse.Namespace) -> int:
    """`--instructions`: each server alone under callgrind (namespaces empty), instructions per
    event counted after the warm-up, all threads and the event loop's (instructions_bench.py)."""
    servers = {BOLT: "bolt", DURABLE_BOLT: "durable", FLOOR: "floor", "ours (empty)": None}
    servers |= {"before (empty)": args.before} if args.before else {}
    rows: dict[str, list[float]] = {}
    for name, code in servers.items():
        work = Path(tempfile.mkdtemp(prefix="slack-instructions-"))
        async with SlackSimulator(extra_config=CONFIG) as sim:
            port, env = free_port(), None
            if code in ("bolt", "durable", "floor"):
                command = reference_command(sim, port, str(work) if code != "bolt" else "", floor=code == "floor")
            else:
                gateway = GatewayHarness([sim], modes="store", state_dir=work / "state")
                gateway.port, env = port, {**os.environ, "PYTHONPATH": code} if code else None
                command = [sys.executable, "-m", "chatstate", "start", "--config", str(gateway.write_config())]
            out = work / "callgrind.out"
            valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes"]
            proc = subprocess.Popen(
                [*valgrind, f"--callgrind-out-file={out}", *command], cwd=work, env=env, stderr=subprocess.DEVNULL
            )
            try:
                await listening(port, proc)
                url = f"http://127.0.0.1:{port}/slack/events"
                await drive(sim, url, proc.pid, 100, args.concurrency)
                subprocess.run(["callgrind_control", "--instr=on", str(proc.pid)], check=True, capture_output=True)
                await drive(sim, url, proc.pid, args.events, args.concurrency)
                subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
            finally:
                proc.terminate()
                proc.wait()
        rows[name] = [n / args.events / 1000 for n in dumped(out) if n]
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nk instructions per event, {args.events} events after 100 of warm-up, concurrency {args.concurrency}")
    print(f"{'server':<30} {'all threads':>12} {'event loop':>11} {'vs bolt':>8} {'vs floor':>9}")
    for name, per in rows.items():
        total = sum(per)
        print(
            f"{name:<30} {total:>12.0f} {per[0]:>11.0f} {total / sum(rows[BOLT]):>7.2f}x {total / sum(rows[FLOOR]):>8.2f}x"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-bolt":
        asyncio.run(serve_bolt(int(sys.argv[2]), sys.argv[3], sys.argv[4], *sys.argv[5:7]))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="300 events, one round")
    parser.add_argument(
        "--before", help="add our side run from this installed copy (pip install --no-deps --target DIR)"
    )
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per event under valgrind's callgrind instead"
    )
    parsed = parser.parse_args()
    if parsed.before:
        parsed.before = check_before(parser, parsed.before)
    if parsed.instructions and parsed.quick:
        parsed.events = 200
    raise SystemExit(asyncio.run(count_instructions(parsed) if parsed.instructions else main(parsed)))

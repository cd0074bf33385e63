"""Teams: what our code adds to an activity around botbuilder's own work.

    python benchmarks/teams_bench.py [--rounds 7] [--calls 300] [--quick]

The Teams plugin is started in-process against the Bot Connector simulator (real RS256 tokens,
real OpenID metadata and JWKS, a real SQLite store), and its `POST /api/messages` handler is
awaited directly with a prepared request (no socket, so aiohttp's HTTP parsing is left out
alike for every arm). The activity is a channel message that does not mention the bot, so the
turn runs botbuilder's whole pipeline and our classification but sends nothing. Arms, each timed
per call, in interleaved rounds (first arm rotating):
  route        the handler, with botframework-connector validating the token.
  route, no-op validation   the same, with the library's `authenticate_request` replaced by a
               coroutine returning the result it gave for this token: every line of ours runs
               (wrapper included), the library's validation does not.
  bare validation  `await BotFrameworkAuthentication.authenticate_request(activity, header)` on
               the loop, as the library's docs call it.
  bare turn    what any botbuilder host must do besides validating: `json.loads` the body,
               `Activity().deserialize(...)` it (as botbuilder-integration-aiohttp does), then
               `await adapter.process_activity(result, activity, bot.on_turn)`: botbuilder's turn
               and our bot, without our request handling around it.
Target 5 (checked, exit 1 when missed): per-activity overhead outside the library's token
validation = median(route, no-op validation) - median(bare turn) <= 50 us, per round, median of
rounds. Cross-check printed: median(route) - median(bare validation) - median(bare turn).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' plugin runtime

from aiohttp.test_utils import make_mocked_request
from bench_support import load_average, machine, median_range, parse_rounds, rounds_options, verdict_exit
from botbuilder.schema import Activity
from runtime_support import FileRuntime

from chatstate import state
from chatstate.adapters.teams.config import TeamsSettings
from chatstate.adapters.teams.plugin import TeamsPlugin
from chatstate.gateway.sim.teams import TeamsSimulator

TARGET_US = 50.0


class _Body:
    """The request body, as aiohttp's payload stream hands it to `Request.read()`."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def set_read_chunk_size(self, size: int) -> None:
        pass

    async def readany(self) -> bytes:
        data, self._data = self._data, b""
        return data


async def timed(make: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    """(median wall us per call, process CPU us per call, all threads) of `calls` awaits."""
    lat = []
    clock, cpu_clock = time.perf_counter, time.process_time
    cpu = 0.0
    for _ in range(calls):
        op = make()  # built outside the timed await (a prepared request costs more than a route)
        c = cpu_clock()
        t = clock()
        await op
        lat.append(clock() - t)
        cpu += cpu_clock() - c
    return statistics.median(lat) * 1e6, cpu / calls * 1e6


async def run(args: argparse.Namespace) -> int:
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="i20-teams-") as tmp:
        async with TeamsSimulator() as sim:
            settings = TeamsSettings.from_table(sim.gateway_config())
            runtime = FileRuntime("teams", state.database_path(Path(tmp)), settings=settings)
            runtime.log.logger.setLevel(logging.WARNING)
            plugin = TeamsPlugin()
            await plugin.start(runtime)
            try:
                return await _measure(args, sim, plugin, load_start)
            finally:
                await plugin.stop()
                await runtime.close()


async def _measure(args: argparse.Namespace, sim: TeamsSimulator, plugin: TeamsPlugin, load_start: str) -> int:
    import json

    bot = plugin.running.bot
    adapter = bot.adapter  # to time the pieces apart
    auth = adapter.bot_framework_authentication
    header = f"Bearer {sim.token()}"
    wire = sim.activity("message_mention", entities=[], text="hello, nobody in particular")
    headers = {"Authorization": header, "Content-Type": "application/json"}
    ids = itertools.count(1)

    def fresh_body() -> bytes:
        """A new activity id each call: the adapter claims every message id once (exactly-once),
        so a repeated id would be answered from its claim without a turn."""
        return json.dumps({**wire, "id": f"bench-{next(ids)}"}).encode()

    def request() -> Any:
        req = make_mocked_request("POST", "/api/messages", headers=headers, payload=_Body(fresh_body()))  # type: ignore[arg-type]
        return plugin.handle(req)

    async def check_route() -> None:
        resp = await request()
        assert resp.status == 200, resp.status

    for _ in range(20):  # warm-up: metadata and keys fetched, caches filled
        await check_route()
    real = auth.authenticate_request
    result = await real(Activity().deserialize(wire), header)

    async def noop(activity: Activity, auth_header: str) -> Any:
        return result

    def route_noop() -> Awaitable[Any]:
        auth.authenticate_request = noop  # type: ignore[method-assign]
        return request()

    def route_real() -> Awaitable[Any]:
        auth.__dict__.pop("authenticate_request", None)
        return request()

    async def bare_turn(body: bytes) -> None:
        activity = Activity().deserialize(json.loads(body))
        await adapter.process_activity(result, activity, bot.on_turn)

    arms: dict[str, Callable[[], Awaitable[Any]]] = {
        "route": route_real,
        "route, no-op validation": route_noop,
        "bare validation": lambda: real(Activity().deserialize(wire), header),
        "bare turn": lambda: bare_turn(fresh_body()),
    }
    names = list(arms)
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    try:
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name].append(await timed(arms[name], args.calls))
    finally:
        auth.__dict__.pop("authenticate_request", None)

    def col(name: str, i: int) -> list[float]:
        return [x[i] for x in runs[name]]

    def mr(values: list[float]) -> str:
        return median_range(values, "{:.1f}")

    overhead = [a - b for a, b in zip(col("route, no-op validation", 0), col("bare turn", 0))]
    cross = [a - v - b for a, v, b in zip(col("route", 0), col("bare validation", 0), col("bare turn", 0))]
    overhead_cpu = [a - b for a, b in zip(col("route, no-op validation", 1), col("bare turn", 1))]
    print(
        f"\n{machine(load_start, load_average(), args.cpu)}; "
        f"{args.rounds} interleaved rounds of {args.calls} calls per arm\n"
    )
    print("| arm | wall us per activity (median [range] of the per-round medians) | process CPU us per activity |")
    print("|---|---:|---:|")
    for name in names:
        print(f"| {name} | {mr(col(name, 0))} | {mr(col(name, 1))} |")
    ok = statistics.median(overhead) <= TARGET_US
    print("\n| target | per-round median [range] | target | verdict |")
    print("|---|---|---|---|")
    print(
        f"| 5. our overhead: route with no-op validation - bare turn (wall us) | {mr(overhead)} | <= {TARGET_US:.0f} | "
        f"{'ok' if ok else 'MISSED'} |"
    )
    print(f"| 5. the same in process CPU us | {mr(overhead_cpu)} | info | info |")
    print(f"| 5. cross-check: route - bare validation - bare turn (wall us) | {mr(cross)} | info | info |")
    return verdict_exit(0 if ok else 1)


if __name__ == "__main__":
    parser = rounds_options(__doc__, calls=300, quick_calls=50, calls_help="activities per arm per round")
    sys.exit(asyncio.run(run(parse_rounds(parser))))

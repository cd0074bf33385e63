"""Two real gateway processes on one Redis, in front of the same simulators.

A load balancer is played by the test: it picks which gateway each delivery goes to by setting
the simulator's `gateway_url` (the harness points it at the last gateway started).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from chatstate.gateway.sim.base import SimulatorServer
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.slack import SlackSimulator
from chatstate.state import Entry, open_keyed_store

S = TypeVar("S", bound=SimulatorServer)
HEALTH_DEADLINE_S = 40.0  # generous: 2 shared cores, probe results cached for 5 s


@asynccontextmanager
async def gateways(
    simulators: Sequence[SimulatorServer],
    url: str,
    tmp_path: Path,
    *,
    count: int = 2,
    state: dict[str, Any] | None = None,
    **kw: Any,
) -> AsyncIterator[list[GatewayHarness]]:
    """Start `count` gateways sharing `simulators` and the Redis at `url` (each with its own
    state dir, so nothing is shared through SQLite by accident); stop them in reverse.
    `state`: more `[state]` keys, e.g. {"sweep_interval_s": 1}."""
    config = {"state": {"url": url, **(state or {})}}
    async with AsyncExitStack() as stack:
        started = []
        for name in "abcdefgh"[:count]:
            gw = GatewayHarness(simulators, config=config, state_dir=tmp_path / f"gw-{name}", **kw)
            started.append(await stack.enter_async_context(gw))
        yield started


def via(gw: GatewayHarness, sim: S) -> S:
    """Point `sim` at `gw` for the next delivery.

    Safe for concurrent deliveries when the caller calls `deliver` right after this, in the
    same task: the simulators read `gateway_url` before their first await.
    """
    sim.gateway_url = gw.gateway_url
    return sim


def stored(url: str, plugin_id: str, namespace: str) -> dict[str, Entry]:
    """The live rows of one namespace, read through our own store API from the test process."""
    with open_keyed_store(plugin_id, namespace, max_entries=50_000, url=url) as store:
        return {e.key: e for e in store.entries()}


async def wait_for_health(
    gw: GatewayHarness, want: Callable[[dict[str, Any]], bool], *, poke: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """Poll /healthz until `want(body)` holds (a deadline, not a sleep-as-sync); `poke` runs
    between polls, e.g. a request that lets a degraded adapter find the store again."""
    deadline = time.monotonic() + HEALTH_DEADLINE_S
    while True:
        _, body = await gw.healthz()
        if want(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz never matched; last: {body}")
        if poke is not None:
            await poke()
        await asyncio.sleep(0.2)


class LoadBalancer:
    """Sends each Slack event to a gateway, round robin over the live ones, retrying as Slack
    does until one answers 2xx; remembers what every event finally got."""

    def __init__(self, slack: SlackSimulator, gws: list[GatewayHarness]) -> None:
        self.slack = slack
        self.gws = gws
        self.down: set[int] = set()
        self.outcomes: dict[str, str] = {}  # event_id -> body of the 2xx answer
        self._turn = itertools.count()

    async def send(self, event: dict[str, Any]) -> str:
        for attempt in itertools.count():
            gw = self.pick()
            try:
                got = await via(gw, self.slack).deliver(event, retry_num=attempt or None)
            except aiohttp.ClientError:  # the process is gone: Slack retries, the LB picks another
                continue
            if got.status == 200:
                self.outcomes[event["event_id"]] = got.body
                return got.body
            assert got.status == 503, got
            await asyncio.sleep(int(got.headers.get("Retry-After", "1")))
        raise AssertionError("unreachable")

    def pick(self) -> GatewayHarness:
        live = [gw for i, gw in enumerate(self.gws) if i not in self.down and gw.running]
        return live[next(self._turn) % len(live)]

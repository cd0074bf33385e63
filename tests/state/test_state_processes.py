"""Several processes on one database: contention without errors, on every backend."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from typing import Any

import state_workers

from chatstate.state import open_keyed_store

PROCESSES = 8
OPS_PER_PROCESS = 5_000
TOKENS = 400
CHILD_TIMEOUT_S = 300  # a hung child fails the test instead of hanging the suite


def test_eight_processes_of_mixed_ops_agree_with_the_model(target):
    seed = open_keyed_store("contend", "mixed", max_entries=1_000_000, **target)
    for n in range(TOKENS):
        seed.register(state_workers.token(n), {"token": state_workers.token(n)})
    seed.close()

    ctx = multiprocessing.get_context("spawn")  # no fork: the parent has threads of its own
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=state_workers.contend, args=(i, target, OPS_PER_PROCESS, TOKENS, barrier, results))
        for i in range(PROCESSES)
    ]
    for w in workers:
        w.start()
    reports = [results.get(timeout=CHILD_TIMEOUT_S) for _ in workers]
    for w in workers:
        w.join(timeout=CHILD_TIMEOUT_S)
        assert w.exitcode == 0

    assert [r["errors"] for r in reports] == [[]] * PROCESSES

    mixed = open_keyed_store("contend", "mixed", max_entries=1_000_000, **target)
    claims = open_keyed_store("contend", "claims", max_entries=1_000_000, **target)
    try:
        consumed = Counter(t for r in reports for t in r["consumed"])
        assert max(consumed.values()) == 1  # a token went to exactly one consumer
        expected: dict[str, Any] = {}
        for r in reports:
            expected.update(r["mine"])
        expected.update({f"shared-{s}": {"shared": s} for s in range(state_workers.SHARED_KEYS)})
        expected.update(
            {
                state_workers.token(n): {"token": state_workers.token(n)}
                for n in range(TOKENS)
                if state_workers.token(n) not in consumed
            }
        )
        assert {e.key: e.value for e in mixed.entries()} == expected

        winners = Counter(key for r in reports for key in r["won"])
        assert max(winners.values()) == 1  # no key claimed twice
        assert winners[state_workers.THE_ONE] == 1  # one claim raced by all 8: exactly one winner
        held = {e.key: e.value for e in claims.entries()}
        assert held == {key: r["worker"] for r in reports for key in r["won"]}
    finally:
        mixed.close()
        claims.close()

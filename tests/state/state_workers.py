"""Child-process bodies for the contention and crash tests.

Kept apart from the test modules so a spawned child imports only `state`, not pytest and
hypothesis. Run as a script it is the crash test's writer: `state_workers.py crash PATH ROUND`.
"""

from __future__ import annotations

import random
import sys
import traceback
from typing import Any

from chatstate.state import open_keyed_store

SHARED_KEYS = 16
CLAIM_KEYS = 200
OWN_KEYS = 40
THE_ONE = "the-one"  # every process claims it right after the start barrier


def token(n: int) -> str:
    return f"token-{n}"


def contend(worker: int, target: dict[str, Any], n_ops: int, n_tokens: int, barrier: Any, results: Any) -> None:
    """Run `n_ops` mixed operations and put {worker, errors, mine, won, consumed} on `results`.

    Own keys (w<worker>-*) are checked against a local model on every call; shared keys only
    ever hold one value per key, so any read can be checked; a second barrier before the final
    pass makes the shared keys' end state deterministic.
    """
    errors: list[str] = []
    mine: dict[str, Any] = {}
    won: list[str] = []
    consumed: list[str] = []

    def expect(what: str, got: object, want: object) -> None:
        if got != want:
            errors.append(f"{what}: got {got!r}, want {want!r}")

    try:
        rng = random.Random(worker)
        mixed = open_keyed_store("contend", "mixed", max_entries=1_000_000, **target)
        claims = open_keyed_store("contend", "claims", max_entries=1_000_000, **target)
        barrier.wait()
        if claims.register_if_absent(THE_ONE, worker):
            won.append(THE_ONE)
        for n in range(n_ops):
            r = rng.random()
            own = f"w{worker}-{rng.randrange(OWN_KEYS)}"
            shared = rng.randrange(SHARED_KEYS)
            try:
                if r < 0.25:
                    mixed.register(own, [worker, n])
                    mine[own] = [worker, n]
                elif r < 0.40:
                    expect(f"lookup {own}", mixed.lookup(own), mine.get(own))
                elif r < 0.48:
                    expect(f"consume {own}", mixed.consume(own), mine.pop(own, None))
                elif r < 0.53:
                    expect(f"delete {own}", mixed.delete(own), mine.pop(own, None) is not None)
                elif r < 0.63:
                    mixed.register(f"shared-{shared}", {"shared": shared})
                elif r < 0.70:
                    got = mixed.lookup(f"shared-{shared}")
                    if got not in (None, {"shared": shared}):
                        errors.append(f"shared-{shared} held {got!r}")
                elif r < 0.73:
                    mixed.delete(f"shared-{shared}")
                elif r < 0.88:
                    key = f"claim-{rng.randrange(CLAIM_KEYS)}"
                    if claims.register_if_absent(key, worker):
                        won.append(key)
                else:
                    t = token(rng.randrange(n_tokens))
                    got = mixed.consume(t)
                    if got is not None:
                        expect(f"consume {t}", got, {"token": t})
                        consumed.append(t)
            except Exception:
                errors.append(traceback.format_exc(limit=3))
        barrier.wait()
        for s in range(SHARED_KEYS):
            mixed.register(f"shared-{s}", {"shared": s})
        mixed.close()
        claims.close()
    except Exception:
        errors.append(traceback.format_exc())
    results.put({"worker": worker, "errors": errors, "mine": mine, "won": won, "consumed": consumed})


def first_open(worker: int, path: str, barrier: Any, results: Any) -> None:
    """Open a database nobody has created yet, together with the other workers; report errors."""
    try:
        barrier.wait()
        store = open_keyed_store("first", "open", max_entries=100, path=path)
        store.register(f"w{worker}", worker)
        won = store.register_if_absent("claim", worker)
        store.close()
        results.put((worker, None, won))
    except Exception:
        results.put((worker, traceback.format_exc(), False))


def crash_writer(path: str, round_no: int) -> None:
    """Write forever; print each key only after its write returned (the acknowledgement)."""
    store = open_keyed_store("crash", "writes", max_entries=1_000_000, path=path)
    claims = open_keyed_store("crash", "claims", max_entries=1_000_000, path=path)
    i = 0
    while True:
        key = f"r{round_no}-{i}"
        if i % 3 == 2:
            assert claims.register_if_absent(key, {"round": round_no, "i": i})
            sys.stdout.write(f"claim {key}\n")
        else:
            store.register(key, {"round": round_no, "i": i, "pad": "x" * (i % 500)})
            sys.stdout.write(f"write {key}\n")
        sys.stdout.flush()
        i += 1


STAGED_KEYS = 10  # keys per namespace in one staged commit


def staged_writer(target: dict[str, Any], round_no: int) -> None:
    """Commit batches forever: STAGED_KEYS keys into each of two namespaces per batch; print the
    batch number only after `commit_staged` returned (the acknowledgement)."""
    from chatstate.state import commit_staged

    left = open_keyed_store("staged", "left", max_entries=1_000_000, **target)
    right = open_keyed_store("staged", "right", max_entries=1_000_000, **target)
    i = 0
    while True:
        batch = [
            store.stage_register(f"r{round_no}-{i}-{j}", {"i": i, "pad": "x" * 200})
            for j in range(STAGED_KEYS)
            for store in (left, right)
        ]
        commit_staged(batch)
        sys.stdout.write(f"{i}\n")
        sys.stdout.flush()
        i += 1


if __name__ == "__main__":
    if sys.argv[1] == "crash":
        crash_writer(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "staged":
        import json

        staged_writer(json.loads(sys.argv[2]), int(sys.argv[3]))


def count_up(worker: int, target: dict[str, Any], n: int, barrier: Any, results: Any) -> None:
    """Add 1 to one shared counter `n` times with `update` (compare-and-set under the hood) and
    put {worker, errors, seen} on `results`; `seen` is every value this worker stored."""
    errors: list[str] = []
    seen: list[int] = []
    try:
        store = open_keyed_store("cas", "counter", max_entries=10, **target)
        barrier.wait()
        for _ in range(n):
            seen.append(store.update("n", lambda v: (v or 0) + 1, max_attempts=1_000))
        store.close()
    except Exception:
        errors.append(traceback.format_exc())
    results.put({"worker": worker, "errors": errors, "seen": seen})

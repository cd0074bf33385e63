"""Awaited writes against the same sync write: latency, loop gaps and group commit.

    python benchmarks/async_write_bench.py [--rounds 7] [--calls 2000] [--tasks 64] [--quick]

Four columns, each on its own SQLite database with the same 1,000 live rows and the same store
settings, in interleaved rounds (the first column rotating) so a noisy neighbour slows each alike:
  sync      `KeyedStore.register` called in a plain loop: one transaction, one commit per write.
  1 task    one coroutine awaiting `AsyncKeyedStore.register` in a loop (the async twin), nothing
            else on the loop, as nothing else runs beside the sync column.
  1 task + ticker   the same with a 1 ms ticker task on the loop: the ticker's largest lateness
            is the loop's largest gap (the loop blocked, or starved of the GIL, that long).
  64 tasks  64 coroutines awaiting `register` at once (what the writer's group commit is for),
            with the ticker.
The ticker also runs alone for a moment each round: its gap there is the machine's own noise.
The latency target is read from the probe-free column, because waking the loop 1,000 times a
second is itself a cost the sync column does not pay (pinned, it adds ~15 us to an awaited
write's p50); the ticker column's latency is printed beside it.

Targets (checked; exit 1 when one is missed, on the medians of the per-round ratios):
  2. 1 task: p50 and p99 latency each <= 2x the sync register's; largest loop gap (1 task +
     ticker, 64 tasks) < 5 ms.
  3. 64 tasks: writes/s >= 3x the sync one-commit-per-write rate, and every await returns only
     after its own commit: checked in a separate (untimed) round, where each task, right after
     its await returns and before it yields again, reads its row through an independent
     sqlite3 connection, which sees committed transactions only (WAL), and must find the
     value it just wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_support import load_average, machine, median_range, parse_rounds, rounds_options, verdict_exit

from chatstate import state

PLUGIN = "bench"
NAMESPACE = "bench.writes"
LIVE_ROWS = 1_000  # keys every column cycles through, so the live row count stays the same
MAX_ENTRIES = 10 * LIVE_ROWS
TTL_MS = 24 * 3600 * 1000
TICK_S = 0.001


def _key(i: int) -> str:
    return f"T0123456:A0123456:C0123456:1712345678.{i % LIVE_ROWS:06d}"  # 45 bytes, as store_bench


def _value(i: int) -> dict[str, object]:
    return {"agent_id": "agent-7", "replied_at": 1712345678901 + i}


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


class Ticker:
    """A task waking every TICK_S; `worst` is its largest lateness (the loop's largest gap)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK_S
            await asyncio.sleep(TICK_S)
            self.worst = max(self.worst, loop.time() - due)

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def sync_round(store: state.KeyedStore, calls: int, offset: int) -> dict[str, float]:
    lat = []
    clock = time.perf_counter
    start = clock()
    for i in range(offset, offset + calls):
        t = clock()
        store.register(_key(i), _value(i))
        lat.append(clock() - t)
    elapsed = clock() - start
    lat.sort()
    return {"rate": calls / elapsed, "p50": _pct(lat, 0.5) * 1e6, "p99": _pct(lat, 0.99) * 1e6}


async def one_task_round(
    store: state.AsyncKeyedStore, calls: int, offset: int, *, probe: bool = True
) -> dict[str, float]:
    lat = []
    clock = time.perf_counter
    ticker = Ticker() if probe else None
    with ticker or contextlib.nullcontext():
        await asyncio.sleep(0)
        start = clock()
        for i in range(offset, offset + calls):
            t = clock()
            await store.register(_key(i), _value(i))
            lat.append(clock() - t)
        elapsed = clock() - start
    lat.sort()
    out = {"rate": calls / elapsed, "p50": _pct(lat, 0.5) * 1e6, "p99": _pct(lat, 0.99) * 1e6}
    if ticker is not None:
        out["gap_ms"] = ticker.worst * 1e3
    return out


async def many_tasks_round(store: state.AsyncKeyedStore, calls: int, tasks: int, offset: int) -> dict[str, float]:
    per_task = max(1, calls // tasks)
    lat: list[float] = []
    clock = time.perf_counter

    async def writer(n: int) -> None:
        for j in range(per_task):
            i = offset + n + j * tasks
            t = clock()
            await store.register(_key(i), _value(i))
            lat.append(clock() - t)

    with Ticker() as ticker:
        await asyncio.sleep(0)
        start = clock()
        await asyncio.gather(*(writer(n) for n in range(tasks)))
        elapsed = clock() - start
    lat.sort()
    return {
        "rate": per_task * tasks / elapsed,
        "p50": _pct(lat, 0.5) * 1e6,
        "p99": _pct(lat, 0.99) * 1e6,
        "gap_ms": ticker.worst * 1e3,
    }


async def idle_gap(seconds: float) -> float:
    """The ticker alone: the gap this machine gives an idle loop (its noise floor)."""
    with Ticker() as ticker:
        await asyncio.sleep(seconds)
    return ticker.worst * 1e3


async def check_own_commit(store: state.AsyncKeyedStore, db: Path, tasks: int, per_task: int) -> tuple[int, int]:
    """Every await returns only after its own commit: (checked, missing).

    A second, independent sqlite3 connection sees committed transactions only (WAL). Right after
    each `await register(...)` returns, before yielding, the task reads its row there and must
    find the value it just wrote (each write's value is unique, so an older commit does not pass).
    """
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    sql = "SELECT value FROM entries WHERE plugin_id = ? AND namespace = ? AND key = ?"
    checked = missing = 0

    async def writer(n: int) -> None:
        nonlocal checked, missing
        for j in range(per_task):
            key = f"own-commit-{n}"
            value = {"task": n, "seq": j, "nonce": time.perf_counter_ns()}
            await store.register(key, value)
            row = reader.execute(sql, (PLUGIN, NAMESPACE, key)).fetchone()
            checked += 1
            if row is None or json.loads(row[0]) != value:
                missing += 1

    try:
        await asyncio.gather(*(writer(n) for n in range(tasks)))
    finally:
        reader.close()
    return checked, missing


def _settings() -> state.StoreSettings:
    return state.StoreSettings()


async def run(args: argparse.Namespace) -> int:
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="i20-aw-", dir=args.dir) as tmp:
        dbs = {name: Path(tmp) / name / "state.sqlite" for name in ("sync", "one", "probed", "many")}
        stores = {}
        for name, db in dbs.items():
            stores[name] = state.open_keyed_store(
                PLUGIN, NAMESPACE, max_entries=MAX_ENTRIES, default_ttl_ms=TTL_MS, path=db, settings=_settings()
            )
            for i in range(LIVE_ROWS):
                stores[name].register(_key(i), _value(i))
        sync_store = stores["sync"]
        one = state.AsyncKeyedStore(stores["one"])
        probed = state.AsyncKeyedStore(stores["probed"])
        many = state.AsyncKeyedStore(stores["many"])
        # warm-up: threads started, statements cached, pages in memory
        sync_round(sync_store, 200, 0)
        await one_task_round(one, 200, 0, probe=False)
        await one_task_round(probed, 200, 0)
        await many_tasks_round(many, 640, args.tasks, 0)

        columns = ["sync", "1 task", "1 task + ticker", f"{args.tasks} tasks"]
        runs: dict[str, list[dict[str, float]]] = {c: [] for c in columns}
        idle: list[float] = []
        for r in range(args.rounds):
            offset = LIVE_ROWS + r * args.calls
            order = columns[r % 4 :] + columns[: r % 4]
            for col in order:
                if col == "sync":
                    runs[col].append(sync_round(sync_store, args.calls, offset))
                elif col == "1 task":
                    runs[col].append(await one_task_round(one, args.calls, offset, probe=False))
                elif col == "1 task + ticker":
                    runs[col].append(await one_task_round(probed, args.calls, offset))
                else:
                    runs[col].append(await many_tasks_round(many, args.calls * 4, args.tasks, offset))
            idle.append(await idle_gap(0.2))
        checked, missing = await check_own_commit(many, dbs["many"], args.tasks, max(2, args.calls // args.tasks))
        for s in stores.values():
            s.close()
    load_end = load_average()

    ratio = {  # per round: async / sync for latency (lower is better), rate ratio for 64 tasks
        "p50": [o["p50"] / s["p50"] for o, s in zip(runs["1 task"], runs["sync"])],
        "p99": [o["p99"] / s["p99"] for o, s in zip(runs["1 task"], runs["sync"])],
        "p50_probed": [o["p50"] / s["p50"] for o, s in zip(runs["1 task + ticker"], runs["sync"])],
        "rate1": [o["rate"] / s["rate"] for o, s in zip(runs["1 task"], runs["sync"])],
        "rate64": [m["rate"] / s["rate"] for m, s in zip(runs[columns[3]], runs["sync"])],
    }
    gap1 = [r["gap_ms"] for r in runs["1 task + ticker"]]
    gap64 = [r["gap_ms"] for r in runs[columns[3]]]

    print(
        f"\n{machine(load_start, load_end, args.cpu)}; "
        f"{args.rounds} interleaved rounds; {LIVE_ROWS:,} live rows per database; SQLite {sqlite3.sqlite_version}\n"
    )
    print("| column | writes/s | p50 us | p99 us | largest loop gap ms |")
    print("|---|---:|---:|---:|---:|")
    for col in columns:
        rs = runs[col]
        gap = median_range([r["gap_ms"] for r in rs], "{:.1f}") if "gap_ms" in rs[0] else "-"
        print(
            f"| {col} | {median_range([r['rate'] for r in rs], '{:.0f}')} | {median_range([r['p50'] for r in rs], '{:.1f}')} | "
            f"{median_range([r['p99'] for r in rs], '{:.1f}')} | {gap} |"
        )
    print(f"| ticker alone (machine noise) | - | - | - | {median_range(idle, '{:.1f}')} |")
    print("\n(median [min-max] of the rounds)\n")

    checks = [
        ("2. 1 task p50 latency / sync p50", ratio["p50"], "<= 2.0", statistics.median(ratio["p50"]) <= 2.0),
        ("2. 1 task p99 latency / sync p99", ratio["p99"], "<= 2.0", statistics.median(ratio["p99"]) <= 2.0),
        ("   (1 task + ticker p50 / sync p50)", ratio["p50_probed"], "info", True),
        ("2. largest loop gap, 1 task + ticker (ms)", gap1, "< 5", statistics.median(gap1) < 5.0),
        (f"2. largest loop gap, {args.tasks} tasks (ms)", gap64, "< 5", statistics.median(gap64) < 5.0),
        ("   (1 task writes/s / sync writes/s)", ratio["rate1"], "info", True),
        (
            f"3. {args.tasks} tasks writes/s / sync writes/s",
            ratio["rate64"],
            ">= 3.0",
            statistics.median(ratio["rate64"]) >= 3.0,
        ),
    ]
    print("| target | per-round median [range] | target | verdict |")
    print("|---|---|---|---|")
    failed = 0
    for name, values, target, ok in checks:
        verdict = "info" if target == "info" else ("ok" if ok else "MISSED")
        failed += verdict == "MISSED"
        print(f"| {name} | {median_range(values)} | {target} | {verdict} |")
    own_ok = checked > 0 and missing == 0
    failed += not own_ok
    print(
        f"| 3. each await returns after its own commit | {checked - missing}/{checked} rows committed when "
        f"their await returned | all | {'ok' if own_ok else 'MISSED'} |"
    )
    return verdict_exit(failed)


if __name__ == "__main__":
    parser = rounds_options(
        __doc__, calls=2_000, quick_calls=300, calls_help="writes per round (the 64-task column: 4x)"
    )
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where the temporary databases go")
    sys.exit(asyncio.run(run(parse_rounds(parser))))

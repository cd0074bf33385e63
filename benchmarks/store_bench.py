"""Benchmark the keyed store against bare sqlite3 and diskcache, and check its four targets.

    python benchmarks/store_bench.py            # full run (a few minutes on 2 busy cores)
    python benchmarks/store_bench.py --quick    # smaller run, same shape, for a smoke check

Why it is shaped like this:
- Columns, not a script per backend: each column is a table of functions (open, fill, one per
  op, close), so a Redis column is one more `Column(...)` in `COLUMNS` and nothing else moves.
- The columns take turns in short rounds (ours, bare, diskcache, then the next round rotated)
  so a noisy neighbour on a shared machine slows all of them alike instead of one of them.
- "bare" runs exactly the SQL statements `state._sqlite.SQLiteBackend` runs (imported, not
  copied), on the same schema, PRAGMAs and `BEGIN IMMEDIATE` per write, plus the json.dumps /
  json.loads any hand-written JSON store needs; it skips what the contract adds on top
  (validation, close-safety bookkeeping, permission re-application, error translation).
- ours and bare start from identical files: the same bulk fill runs against both.
Targets: ours >= 0.7x bare and >= 1.0x diskcache for every op; RSS growth
< 10 MiB over 30,000 ops across 100 store instances; no sweep batch transaction of 100,000
expired rows longer than 50 ms; the largest event-loop gap while the async twin writes 10,000
rows < 20 ms. A register into a namespace at its max_entries (each write evicts the
oldest row) costs at most 1.3x a plain register, at 1k, 100k and 1M rows (`--cap-only` runs
just that part, through the public API only, so it also measures an older checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

import diskcache  # noqa: E402

from chatstate import state  # noqa: E402
from chatstate.gateway.clock import now_ms  # noqa: E402
from chatstate.state import _sqlite  # noqa: E402
from chatstate.state import _sqlite as sql  # noqa: E402  (the very statements the backend runs)
from chatstate.state._files import SCHEMA  # noqa: E402
from chatstate.state._spec import Mode  # noqa: E402

OPS = ("register", "lookup", "register_if_absent", "consume")  # run in this order: the claims
# add fresh keys that consume then removes, so the live row count ends where it started.
NEW_OPS = ("update", "lookup_many", "count", "entries_page")  # v2: ours and bare only
ALL_OPS = OPS + NEW_OPS
BATCH = 10  # keys per lookup_many
PAGE = 100  # rows per entries page
SLOW_OPS = {"count": 50, "entries_page": 10}  # these run count // N times: count walks every row
PLUGIN, NAMESPACE = "bench", "bench.rows"
TTL_MS = 24 * 3_600_000  # Slack thread participation's TTL: every row expires, none before the end
VALUE = {"agent_id": "agent-7", "replied_at": 1_712_345_678_901}  # a typical adapter value
SETTINGS = state.StoreSettings()
CAPACITY = 10_000_000  # max_entries: no column evicts during a run, so all time the same work

TARGET_BARE = 0.7  # ours / bare sqlite3, ops/s, each op
TARGET_DISKCACHE = 1.0  # ours / diskcache, ops/s, each op
TARGET_RSS_MIB = 10.0  # growth over 30,000 ops across 100 store instances
TARGET_SWEEP_BATCH_MS = 50.0  # longest single sweep transaction
TARGET_LOOP_GAP_MS = 20.0  # largest gap a 1 ms ticker sees while the async twin writes


def key_of(i: int) -> str:
    return f"T0123ABCD:A0456:C0789EFGH:{1_712_345_000 + i}.{i % 1_000_000:06d}"


# -- columns: one function per backend per op ---------------------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    open: Callable[[Path, int], Any]  # (directory, rows it must hold) -> handle
    fill: Callable[[Any, Path, range], None]  # bulk-load live rows before timing
    ops: dict[str, Callable[[Any, str], Any]]
    close: Callable[[Any], None]


def sqlite_fill(path: Path, keys: range) -> None:
    """Bulk-load live rows with the backend's own upsert, one transaction (untimed setup)."""
    conn = sqlite3.connect(path, isolation_level=None)
    now, text = now_ms(), json.dumps(VALUE, separators=(",", ":"))
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(sql.SQL_UPSERT, ((PLUGIN, NAMESPACE, key_of(i), now + i, text, now + TTL_MS, i + 1) for i in keys))
    conn.execute("COMMIT")
    conn.close()


# ours: the public API, exactly as an adapter calls it
def ours_open(directory: Path, rows: int) -> state.KeyedStore:
    return state.open_keyed_store(
        PLUGIN,
        NAMESPACE,
        max_entries=CAPACITY,
        default_ttl_ms=TTL_MS,
        path=directory / "state.sqlite",
        settings=SETTINGS,
    )


def ours_fill(store: state.KeyedStore, directory: Path, keys: range) -> None:
    sqlite_fill(directory / "state.sqlite", keys)


def ours_register(store: state.KeyedStore, key: str) -> None:
    store.register(key, VALUE)


def ours_lookup(store: state.KeyedStore, key: str) -> Any:
    return store.lookup(key)


def ours_register_if_absent(store: state.KeyedStore, key: str) -> bool:
    return store.register_if_absent(key, VALUE)


def ours_consume(store: state.KeyedStore, key: str) -> Any:
    return store.consume(key)


def ours_update(store: state.KeyedStore, key: str) -> Any:
    return store.update(key, lambda value: VALUE)


def ours_lookup_many(store: state.KeyedStore, keys: tuple[str, ...]) -> Any:
    return store.lookup_many(keys)


def ours_count(store: state.KeyedStore, key: str) -> int:
    return store.count()


def ours_entries_page(store: state.KeyedStore, key: str) -> list[Any]:
    return [e.value for e in store.entries(limit=PAGE)]


OURS_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "register": ours_register,
    "lookup": ours_lookup,
    "register_if_absent": ours_register_if_absent,
    "consume": ours_consume,
    "update": ours_update,
    "lookup_many": ours_lookup_many,
    "count": ours_count,
    "entries_page": ours_entries_page,
}


# bare: the backend's statements, same PRAGMAs, BEGIN IMMEDIATE per write, nothing else
@dataclass
class Bare:
    conn: sqlite3.Connection


def bare_open(directory: Path, rows: int) -> Bare:
    path = directory / "state.sqlite"
    conn = sqlite3.connect(path, isolation_level=None, timeout=SETTINGS.busy_timeout_s)
    conn.execute(f"PRAGMA busy_timeout = {int(SETTINGS.busy_timeout_s * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {state.SCHEMA_VERSION}")
    conn.execute("COMMIT")
    return Bare(conn)


def bare_fill(bare: Bare, directory: Path, keys: range) -> None:
    sqlite_fill(directory / "state.sqlite", keys)


def _bare_write(bare: Bare, key: str, mode: Mode) -> bool:
    """The one statement SQLiteBackend.write runs below the cap (nothing here is at a cap)."""
    now = now_ms()
    params = (PLUGIN, NAMESPACE, key, now, json.dumps(VALUE), now + TTL_MS, random.getrandbits(63), CAPACITY)
    conn = bare.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        written = conn.execute(sql.SQL_BELOW_CAP[mode], params).rowcount > 0
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return written


def bare_register(bare: Bare, key: str) -> None:
    _bare_write(bare, key, Mode.UPSERT)


def bare_register_if_absent(bare: Bare, key: str) -> bool:
    return _bare_write(bare, key, Mode.CLAIM)


def bare_lookup(bare: Bare, key: str) -> Any:
    row = bare.conn.execute(sql.SQL_READ, (PLUGIN, NAMESPACE, key, now_ms())).fetchone()
    return None if row is None else json.loads(row[0])


def bare_consume(bare: Bare, key: str) -> Any:
    now = now_ms()
    conn = bare.conn
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute(sql.SQL_TAKE, (PLUGIN, NAMESPACE, key)).fetchone()
    conn.execute("COMMIT")
    return None if row is None or (row[2] is not None and row[2] <= now) else json.loads(row[0])


def bare_update(bare: Bare, key: str) -> Any:
    """Read the row, then write it only if its version is unchanged (what `update` does)."""
    now = now_ms()
    conn = bare.conn
    row = conn.execute(sql.SQL_READ, (PLUGIN, NAMESPACE, key, now)).fetchone()
    json.loads(row[0])
    value = VALUE
    conn.execute("BEGIN IMMEDIATE")
    applied = (
        conn.execute(
            sql.SQL_MATCH,
            (PLUGIN, NAMESPACE, key, now, json.dumps(value), now + TTL_MS, random.getrandbits(63), row[3]),
        ).rowcount
        > 0
    )
    conn.execute("COMMIT")
    return value if applied else None


def bare_lookup_many(bare: Bare, keys: tuple[str, ...]) -> Any:
    size = next(n for n in sql.READ_MANY_SIZES if n >= len(keys))
    padded = [*keys, *[keys[0]] * (size - len(keys))]
    rows = bare.conn.execute(sql.SQL_READ_MANY[size], (PLUGIN, NAMESPACE, now_ms(), *padded)).fetchall()
    return {r[0]: json.loads(r[1]) for r in rows}


def bare_count(bare: Bare, key: str) -> int:
    return int(
        bare.conn.execute(sql.SQL_COUNT_LIVE, {"plugin": PLUGIN, "ns": NAMESPACE, "now": now_ms()}).fetchone()[0]
    )


def bare_entries_page(bare: Bare, key: str) -> list[Any]:
    args = {"plugin": PLUGIN, "ns": NAMESPACE, "now": now_ms(), "after_c": -(2**63), "after_k": "", "limit": PAGE}
    return [json.loads(r[1]) for r in bare.conn.execute(sql.SQL_SCAN_PAGE, args).fetchall()]


def bare_close(bare: Bare) -> None:
    bare.conn.close()


# diskcache: its defaults (WAL, synchronous=NORMAL), a TTL on every write like ours
TTL_S = TTL_MS / 1000


def dc_open(directory: Path, rows: int) -> diskcache.Cache:
    return diskcache.Cache(str(directory / "diskcache"))


def dc_fill(cache: diskcache.Cache, directory: Path, keys: range) -> None:
    with cache.transact():
        for i in keys:
            cache.set(key_of(i), VALUE, expire=TTL_S)


def dc_register(cache: diskcache.Cache, key: str) -> None:
    cache.set(key, VALUE, expire=TTL_S)


def dc_lookup(cache: diskcache.Cache, key: str) -> Any:
    return cache.get(key)


def dc_register_if_absent(cache: diskcache.Cache, key: str) -> bool:
    return cache.add(key, VALUE, expire=TTL_S)


def dc_consume(cache: diskcache.Cache, key: str) -> Any:
    return cache.pop(key)


# redis: the same public API on the Redis backend, against a server of our own
REDIS_URL: str | None = None  # set by main(): --redis-url, or a private redis-server it starts


def redis_open(directory: Path, rows: int) -> state.KeyedStore:
    assert REDIS_URL is not None
    url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix=bench-{os.getpid()}-{rows}"
    return state.open_keyed_store(
        PLUGIN, NAMESPACE, max_entries=CAPACITY, default_ttl_ms=TTL_MS, url=url, settings=SETTINGS
    )


def redis_fill(store: state.KeyedStore, directory: Path, keys: range) -> None:
    """Load through the API from a few threads (untimed); Redis has no file to bulk-load."""
    store.clear()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.register(key_of(i), VALUE), keys, chunksize=256))


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str | None]:
    """A private redis-server (loopback, appendonly everysec as docs/state.md recommends)."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 15
        while True:  # poll the starting server with a deadline
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


COLUMNS = (
    Column("ours", ours_open, ours_fill, OURS_OPS, lambda s: s.close()),
    Column(
        "bare sqlite3",
        bare_open,
        bare_fill,
        {
            "register": bare_register,
            "lookup": bare_lookup,
            "register_if_absent": bare_register_if_absent,
            "consume": bare_consume,
            "update": bare_update,
            "lookup_many": bare_lookup_many,
            "count": bare_count,
            "entries_page": bare_entries_page,
        },
        bare_close,
    ),
    Column(
        "diskcache",
        dc_open,
        dc_fill,
        {
            "register": dc_register,
            "lookup": dc_lookup,
            "register_if_absent": dc_register_if_absent,
            "consume": dc_consume,
        },
        lambda c: c.close(),
    ),
)
REDIS_COLUMN = Column("ours on redis", redis_open, redis_fill, OURS_OPS, lambda s: s.close())


# -- throughput and latency -----------------------------------------------------------------
@dataclass
class Sample:
    latencies_ns: list[int] = field(default_factory=list)
    cpu_s: float = 0.0  # this thread's CPU time over the timed loops: robust to a busy machine
    round_ops_per_s: list[float] = field(default_factory=list)  # one per round, for paired ratios

    @property
    def ops_per_s(self) -> float:
        return len(self.latencies_ns) / (sum(self.latencies_ns) / 1e9)

    @property
    def cpu_us(self) -> float:
        return self.cpu_s * 1e6 / len(self.latencies_ns)

    def pct_us(self, q: float) -> float:
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1_000


def keys_for(op: str, rows: int, count: int, rng: random.Random) -> list[Any]:
    """Keys each op touches: overwrites/reads of live rows, then fresh claims, then their consumes."""
    if op == "lookup_many":
        return [tuple(key_of(rng.randrange(rows)) for _ in range(BATCH)) for _ in range(count)]
    if op in ("register", "lookup", "update", "count", "entries_page"):
        return [key_of(rng.randrange(rows)) for _ in range(count)]
    return [key_of(rows + i) for i in range(count)]  # claimed fresh, then consumed


def check_result(op: str, result: Any, rows: int) -> None:
    # A benchmark that times misses or lost claims would flatter everyone: insist on hits.
    if op in ("lookup", "consume", "update") and result != VALUE:
        raise AssertionError(f"{op} missed a live row")
    if op == "register_if_absent" and result is not True:
        raise AssertionError("register_if_absent lost a fresh key")
    if op == "lookup_many" and not (0 < len(result) <= BATCH and all(v == VALUE for v in result.values())):
        raise AssertionError("lookup_many missed live rows")
    if (op == "count" and result != rows) or (op == "entries_page" and len(result) != min(PAGE, rows)):
        raise AssertionError(f"{op} saw {result if op == 'count' else len(result)} rows")


def run_size(
    rows: int, count: int, rounds: int, workdir: Path, columns: tuple[Column, ...] = COLUMNS
) -> dict[str, dict[str, Sample]]:
    handles: dict[str, Any] = {}
    for col in columns:
        directory = workdir / f"{col.name.replace(' ', '-')}-{rows}"
        directory.mkdir()
        handles[col.name] = handle = col.open(directory, rows)
        col.fill(handle, directory, range(rows))
    results = {col.name: {op: Sample() for op in ALL_OPS if op in col.ops} for col in columns}
    rng = random.Random(rows)
    try:
        for op in ALL_OPS:
            per_round = max(1, count // SLOW_OPS.get(op, 1) // rounds)
            keys = keys_for(op, rows, per_round * rounds, rng)
            runs = tuple(col for col in columns if op in col.ops)
            for r in range(rounds):
                chunk = keys[r * per_round : (r + 1) * per_round]
                order = runs[r % len(runs) :] + runs[: r % len(runs)]
                for col in order:
                    fn, handle, sample = col.ops[op], handles[col.name], results[col.name][op]
                    lat = sample.latencies_ns
                    gc.collect()
                    cpu0 = time.thread_time()
                    for key in chunk:
                        t0 = time.perf_counter_ns()
                        result = fn(handle, key)
                        lat.append(time.perf_counter_ns() - t0)
                        check_result(op, result, rows)
                    sample.cpu_s += time.thread_time() - cpu0
                    sample.round_ops_per_s.append(len(chunk) / (sum(lat[-len(chunk) :]) / 1e9))
    finally:
        for col in columns:
            col.close(handles[col.name])
    return results


# -- RSS over many store instances (a fresh interpreter, so earlier phases do not hide growth) --
def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_child(workdir: Path, instances: int, ops: int) -> dict[str, float]:
    path = workdir / "rss.sqlite"
    warm = state.open_keyed_store(PLUGIN, "warm-up", max_entries=1_000, default_ttl_ms=TTL_MS, path=path)
    for i in range(200):
        warm.register(key_of(i), VALUE)
        warm.lookup(key_of(i))
    gc.collect()
    before = rss_bytes()
    stores = [
        state.open_keyed_store(PLUGIN, f"ns-{n}", max_entries=100, default_ttl_ms=TTL_MS, path=path)
        for n in range(instances)
    ]
    for i in range(ops):
        store, key = stores[i % instances], key_of(i // instances % 150)  # 150 keys > cap: evictions
        match i % 3:
            case 0:
                store.register(key, VALUE)
            case 1:
                store.lookup(key)
            case _:
                store.consume(key)
    for store in stores:
        store.close()
    gc.collect()
    after = rss_bytes()
    warm.close()
    return {
        "instances": instances,
        "ops": ops,
        "before_mib": before / 2**20,
        "after_mib": after / 2**20,
        "growth_mib": (after - before) / 2**20,
    }


def run_rss(workdir: Path, instances: int, ops: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(workdir), str(instances), str(ops)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


# -- sweep: how long each batch transaction holds the write lock ------------------------------
@contextlib.contextmanager
def timed_transactions(durations: list[float], cpu: list[float]) -> Iterator[None]:
    """Wrap the backend's one transaction helper to time BEGIN IMMEDIATE .. COMMIT (+ the
    permission check): wall ms, and this thread's CPU ms (what a busy machine cannot inflate)."""
    original = _sqlite.SQLiteBackend._transact

    def timed(self: _sqlite.SQLiteBackend, op: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        result = original(self, op, work)
        if op == "sweep":
            durations.append((time.perf_counter_ns() - t0) / 1e6)
            cpu.append((time.thread_time_ns() - c0) / 1e6)
        return result

    _sqlite.SQLiteBackend._transact = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        _sqlite.SQLiteBackend._transact = original  # type: ignore[method-assign]


def run_sweep(workdir: Path, expired: int, live: int) -> dict[str, float]:
    path = workdir / "sweep.sqlite"
    state.open_keyed_store(PLUGIN, NAMESPACE, max_entries=1, path=path).close()  # create the schema
    conn = sqlite3.connect(path, isolation_level=None)
    now = now_ms()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        sql.SQL_UPSERT,
        (  # expired rows spread over plugins and namespaces, plus live ones
            (
                f"plugin-{i % 4}",
                f"ns-{i % 16}",
                key_of(i),
                now - 10_000,
                '{"v":1}',
                (now - 1_000 - i % 5_000) if i < expired else now + TTL_MS,
                i + 1,
            )
            for i in range(expired + live)
        ),
    )
    conn.execute("COMMIT")
    conn.close()
    durations: list[float] = []
    cpu: list[float] = []
    t0 = time.perf_counter()
    with timed_transactions(durations, cpu):
        removed = state.sweep_expired(path, now_ms=now)
    total = time.perf_counter() - t0
    if removed != expired:
        raise AssertionError(f"sweep removed {removed} rows, expected {expired}")
    return {
        "removed": removed,
        "batches": len(durations),
        "total_ms": total * 1e3,
        "max_batch_ms": max(durations),
        "p50_batch_ms": statistics.median(durations),
        "max_batch_cpu_ms": max(cpu),
        "cpu_of_longest_ms": cpu[durations.index(max(durations))],
        "over_target": sum(d >= TARGET_SWEEP_BATCH_MS for d in durations),
    }


# -- the async twin and the event loop ---------------------------------------------------------
async def loop_gap(workdir: Path, writes: int, writers: int) -> dict[str, float]:
    store = await state.open_async_keyed_store(
        PLUGIN, "loop", max_entries=writes * 2, default_ttl_ms=TTL_MS, path=workdir / "loop.sqlite"
    )
    done = asyncio.Event()
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def writer(w: int) -> None:
        for i in range(w, writes, writers):
            await store.register(key_of(i), VALUE)

    tick = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.perf_counter() - t0
    done.set()
    await tick
    await store.close()
    return {
        "writes": writes,
        "writers": writers,
        "writes_per_s": writes / elapsed,
        "max_gap_ms": max(gaps) * 1e3,
        "p99_gap_ms": sorted(gaps)[int(0.99 * len(gaps))] * 1e3,
    }


# -- report ---------------------------------------------------------------------------------------
def paired(ours: Sample, other: Sample) -> str:
    """Median and range of the per-round ratios: each round's columns ran back to back, so a
    noisy spell hits both sides of a ratio alike (shown beside the pooled ratio, not instead)."""
    ratios = sorted(a / b for a, b in zip(ours.round_ops_per_s, other.round_ops_per_s))
    return f"rounds {statistics.median(ratios):.2f}x [{ratios[0]:.2f}-{ratios[-1]:.2f}]"


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(
    sizes: dict[int, dict[str, dict[str, Sample]]],
    rss: dict[str, float],
    sweep: dict[str, float],
    gap: dict[str, float],
) -> bool:
    names = list(next(iter(sizes.values())))  # every column that ran, Redis included
    ok = True
    print("\n## Throughput (ops/s) and latency (p50 / p99 us), per op and live-row count\n")
    print(
        "| rows | op | "
        + " | ".join(f"{n} ops/s | {n} p50/p99 us" for n in names)
        + " | ours/bare | ours/diskcache | CPU us/op (ours, bare, diskcache) | CPU ours/bare, ours/diskcache |"
    )
    print("|" + "---|" * (2 + 2 * len(names) + 4))
    for rows, cols in sizes.items():
        for op in OPS:
            cells = []
            for n in names:
                s = cols[n][op]
                cells += [f"{s.ops_per_s:,.0f}", f"{s.pct_us(0.5):.1f} / {s.pct_us(0.99):.1f}"]
            ours = cols["ours"][op].ops_per_s
            r_bare = ours / cols["bare sqlite3"][op].ops_per_s
            r_dc = ours / cols["diskcache"][op].ops_per_s
            ok &= r_bare >= TARGET_BARE and r_dc >= TARGET_DISKCACHE
            cpu = [cols[n][op].cpu_us for n in names]
            print(
                f"| {rows:,} | {op} | "
                + " | ".join(cells)
                + f" | {r_bare:.2f}x {verdict(r_bare >= TARGET_BARE)}, {paired(cols['ours'][op], cols['bare sqlite3'][op])}"
                + f" | {r_dc:.2f}x {verdict(r_dc >= TARGET_DISKCACHE)}, {paired(cols['ours'][op], cols['diskcache'][op])}"
                + f" | {cpu[0]:.1f}, {cpu[1]:.1f}, {cpu[2]:.1f} | {cpu[1] / cpu[0]:.2f}x, {cpu[2] / cpu[0]:.2f}x |"
            )
    others = [n for n in names if n != "diskcache"]
    print(
        f"\n## v2 operations (update = read + compare-and-set; lookup_many of {BATCH} keys; count; a page of"
        f" {PAGE} entries); no diskcache column (it has no such calls)\n"
    )
    print(
        "| rows | op | "
        + " | ".join(f"{n} ops/s | {n} p50/p99 us" for n in others)
        + " | ours/bare | CPU us/op (ours, bare) | CPU ours/bare |"
    )
    print("|" + "---|" * (2 + 2 * len(others) + 3))
    for rows, cols in sizes.items():
        for op in NEW_OPS:
            cells = []
            for n in others:
                s = cols[n][op]
                cells += [f"{s.ops_per_s:,.0f}", f"{s.pct_us(0.5):.1f} / {s.pct_us(0.99):.1f}"]
            r_bare = cols["ours"][op].ops_per_s / cols["bare sqlite3"][op].ops_per_s
            ok &= r_bare >= TARGET_BARE
            cpu = [cols[n][op].cpu_us for n in ("ours", "bare sqlite3")]
            print(
                f"| {rows:,} | {op} | "
                + " | ".join(cells)
                + f" | {r_bare:.2f}x {verdict(r_bare >= TARGET_BARE)}, {paired(cols['ours'][op], cols['bare sqlite3'][op])}"
                + f" | {cpu[0]:.1f}, {cpu[1]:.1f} | {cpu[1] / cpu[0]:.2f}x |"
            )
    checks = [
        (
            f"RSS growth, {rss['ops']:,} ops across {rss['instances']} store instances",
            f"{rss['growth_mib']:.2f} MiB ({rss['before_mib']:.1f} -> {rss['after_mib']:.1f})",
            f"< {TARGET_RSS_MIB:g} MiB",
            rss["growth_mib"] < TARGET_RSS_MIB,
        ),
        (
            f"Sweep of {sweep['removed']:,} expired rows: longest batch transaction",
            f"{sweep['max_batch_ms']:.1f} ms, of it {sweep['cpu_of_longest_ms']:.1f} ms CPU (median"
            f" {sweep['p50_batch_ms']:.1f} ms; {sweep['over_target']} of {sweep['batches']} batches >= 50 ms; most CPU"
            f" in one batch {sweep['max_batch_cpu_ms']:.1f} ms; {sweep['total_ms']:,.0f} ms in all)",
            f"< {TARGET_SWEEP_BATCH_MS:g} ms",
            sweep["max_batch_ms"] < TARGET_SWEEP_BATCH_MS,
        ),
        (
            f"Largest event-loop gap, async twin writing {gap['writes']:,} rows ({gap['writers']} tasks)",
            f"{gap['max_gap_ms']:.1f} ms (p99 {gap['p99_gap_ms']:.1f} ms; {gap['writes_per_s']:,.0f} writes/s)",
            f"< {TARGET_LOOP_GAP_MS:g} ms",
            gap["max_gap_ms"] < TARGET_LOOP_GAP_MS,
        ),
    ]
    print("\n## Resource targets\n")
    print("| check | measured | target | |\n|---|---|---|---|")
    for name, measured, target, passed in checks:
        ok &= passed
        print(f"| {name} | {measured} | {target} | {verdict(passed)} |")
    return ok


# -- a write at the cap costs what a plain write costs, at any size --------------------
TARGET_AT_CAP = 1.3  # at-cap register / plain register, each size
CAP_SIZES = (1_000, 100_000, 1_000_000)


def run_cap(workdir: Path, count: int, rounds: int, sizes: tuple[int, ...] = CAP_SIZES) -> dict[int, dict[str, Sample]]:
    """Per size: two namespaces of `rows` live rows in one file, one far below its max_entries
    ("register": a plain register, rewriting live rows as the main table's register does) and one
    at it ("at-cap": each fresh key evicts the oldest row), plus lookups of live rows; the three
    take turns in short rounds."""
    out: dict[int, dict[str, Sample]] = {}
    for rows in sizes:
        directory = workdir / f"cap-{rows}"
        directory.mkdir()
        path = directory / "state.sqlite"
        now, text = now_ms(), json.dumps(VALUE, separators=(",", ":"))
        plain = state.open_keyed_store(PLUGIN, "plain", max_entries=CAPACITY, default_ttl_ms=TTL_MS, path=path)
        capped = state.open_keyed_store(PLUGIN, "capped", max_entries=rows, default_ttl_ms=TTL_MS, path=path)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        for ns in ("plain", "capped"):
            conn.executemany(
                sql.SQL_UPSERT,
                ((PLUGIN, ns, key_of(i), now - rows + i, text, now + TTL_MS, i + 1) for i in range(rows)),
            )
        conn.execute("COMMIT")
        conn.close()
        per_round = max(1, count // rounds)
        ops: dict[str, Callable[[str], Any]] = {
            "register": functools.partial(plain.register, value=VALUE),
            "lookup": plain.lookup,
            "at-cap": functools.partial(capped.register, value=VALUE),
        }
        samples = {op: Sample() for op in ops}
        rng = random.Random(rows)
        fresh = iter(range(rows, rows + 10 * count))
        try:
            for r in range(rounds):
                names = list(ops)[r % 3 :] + list(ops)[: r % 3]
                for op in names:
                    keys = [
                        key_of(rng.randrange(rows)) if op != "at-cap" else key_of(next(fresh)) for _ in range(per_round)
                    ]
                    fn, sample = ops[op], samples[op]
                    gc.collect()
                    cpu0 = time.thread_time()
                    for key in keys:
                        t0 = time.perf_counter_ns()
                        fn(key)
                        sample.latencies_ns.append(time.perf_counter_ns() - t0)
                    sample.cpu_s += time.thread_time() - cpu0
            if capped.count() != rows:
                raise AssertionError("the capped namespace is not at its max_entries")
        finally:
            plain.close()
            capped.close()
        out[rows] = samples
        shutil.rmtree(directory, ignore_errors=True)
    return out


def report_cap(cap: dict[int, dict[str, Sample]]) -> bool:
    print("\n## Writes at the cap: a new key into a namespace at max_entries vs a plain register, same file")
    print(
        "| rows | register us p50 | at-cap register us p50 | at-cap / register (mean) | lookup us p50 | CPU us register / at-cap | target |"
    )
    print("|---|---|---|---|---|---|---|")
    ok = True
    for rows, s in cap.items():
        ratio = s["register"].ops_per_s / s["at-cap"].ops_per_s
        passed = ratio <= TARGET_AT_CAP
        ok &= passed
        print(
            f"| {rows:,} | {s['register'].pct_us(0.5):.1f} | {s['at-cap'].pct_us(0.5):.1f} | {ratio:.2f}x "
            f"| {s['lookup'].pct_us(0.5):.1f} | {s['register'].cpu_us:.1f} / {s['at-cap'].cpu_us:.1f} "
            f"| <= {TARGET_AT_CAP}x {verdict(passed)} |"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer ops per measurement (smoke run)")
    parser.add_argument("--dir", help="where to put the databases (default: a temp dir, removed after)")
    parser.add_argument(
        "--redis-url",
        help="Redis for the 'ours on redis' column (default: start a private"
        " redis-server if one is installed, else leave the column out)",
    )
    parser.add_argument("--cap-only", action="store_true", help="only the at-cap writes, public API only")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        print(json.dumps(rss_child(Path(args.rss_child[0]), int(args.rss_child[1]), int(args.rss_child[2]))))
        return 0
    count, rounds = (1_000, 4) if args.quick else (12_000, 24)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="store-bench-"))
    workdir = Path(tempfile.mkdtemp(dir=base))
    started = time.perf_counter()
    print(
        f"# store_bench {'--quick ' if args.quick else ''}python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}, diskcache {diskcache.__version__}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}, dir {workdir}"
    )
    global REDIS_URL
    if args.cap_only:
        try:
            ok = report_cap(run_cap(workdir, count, rounds))
        finally:
            shutil.rmtree(base if not args.dir else workdir, ignore_errors=True)
        print(f"\n{'all targets met' if ok else 'some targets MISSED'} in {time.perf_counter() - started:.0f} s")
        return 0 if ok else 1
    try:
        with contextlib.ExitStack() as stack:
            REDIS_URL = args.redis_url or stack.enter_context(redis_server(workdir))
            columns = COLUMNS + ((REDIS_COLUMN,) if REDIS_URL else ())
            print(f"# redis column: {REDIS_URL or 'left out (no redis-server installed, no --redis-url)'}")
            sizes = {rows: run_size(rows, count, rounds, workdir, columns) for rows in (1_000, 100_000)}
        rss = run_rss(workdir, 100, 30_000)
        sweep = run_sweep(workdir, 100_000, 10_000)
        gap = asyncio.run(loop_gap(workdir, 10_000, 4))
        cap = run_cap(workdir, count, rounds)
        ok = report(sizes, rss, sweep, gap)
        ok = report_cap(cap) and ok
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\n{'all targets met' if ok else 'some targets MISSED'} in {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Gateway benchmark: echo route vs a bare aiohttp handler, and restart-to-ready with 1M rows.

    python benchmarks/gateway_bench.py [--requests 21000] [--rounds 7] [--concurrency 16] [--rows 1000000] [--quick]
                                       [--before DIR]

The bare handler and two echo gateways (access log on, off) are real subprocesses on loopback,
loaded in the same run, in interleaved rounds, by the same bounded load generator: its own
process, a fixed number of requests per round over `--concurrency` keep-alive connections with
one request in flight on each, raw HTTP/1.1 so it stays cheaper than the servers it loads.
The echo route verifies an HMAC and does one awaited durable write per request (the counter is
read from the plugin's memory cache, filled during warm-up); the bare handler reads the body and
answers. Each row also shows the server process's CPU time per request (all its threads), which
noise from other work on the machine moves far less than req/s, split by thread (/proc).

The floor (benchmarks/floor_server.py) runs in the same rounds: plain aiohttp that
verifies the HMAC as echo does, parses, does one durable write through one writer thread with
group commit and answers. Goal: the echo route (access log on) at >= 0.8x the floor's req/s and
<= 1.25x its server CPU per request. `--before DIR` adds a third echo gateway (access log on) run
from another copy of the package (`pip install --no-deps --target DIR <checkout>`) in the same
rounds, for a before/after side by side; its rows are information, not targets.

Targets (checked: exit 1 when one is missed; per-round ratios, their median):
  1. echo route with the access log on >= 0.5x the bare handler's req/s, and its server CPU per
     request <= 2x the bare handler's, 16 keep-alive connections.
  6. restart to ready < 1 s with 1,000,000 live rows (RSS and database size reported). The rows
     are built in one transaction: one row written through the public API, then copied
     `rows - 1` times by one INSERT ... SELECT on the documented `entries` table (whatever its
     other columns), so the triggers keep the row counts right.
Prints Markdown tables (docs/performance.md, "## Gateway").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_support import check_before, load_average, serve_app, verdict_exit  # noqa: E402

from chatstate.gateway.cpu import pin_process  # noqa: E402
from chatstate.gateway.echo import NAMESPACE, SIGNATURE_HEADER, sign  # noqa: E402
from chatstate.gateway.sim.harness import GatewayHarness, free_port  # noqa: E402

SECRET = "bench-secret"
KEYS = 1000  # distinct echo counters the load cycles through
WARMUP = KEYS  # requests per server before the rounds: every key once, connections, caches
BARE = "bare aiohttp handler"
FLOOR = "floor (aiohttp + HMAC + parse + one group-committed durable write)"
FLOOR_RPS, FLOOR_CPU = 0.8, 1.25  # echo vs floor: req/s at least, CPU per request at most
BEFORE = "code before:"  # names the --before gateway's rows


async def _serve_bare(port: int) -> None:
    from aiohttp import web

    async def bare(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/bare", bare)
    await serve_app(app, port)


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the driver: send a request, read the answer, repeat."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buf = bytearray()
        self.need = 0  # bytes of the answer being read (headers + body); 0 = headers not seen yet
        self.sent_at = 0.0
        self.waiting = False  # a request of ours has no complete answer yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        request = self.run.next_request()
        if request is None:
            self.transport.close()
            return
        self.waiting = True
        self.sent_at = time.perf_counter()
        self.transport.write(request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if not self.need:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                at = head.index(b"\r\ncontent-length:") + 17
                stop = head.find(b"\r\n", at)
                self.need = end + 4 + int(head[at : stop if stop >= 0 else None])
                if head[9:12] != b"200":
                    self.run.fail(f"HTTP {head[9:12].decode()}")
                    return
            if len(buf) < self.need:
                return
            del buf[: self.need]
            self.need = 0
            self.waiting = False
            self.run.done(time.perf_counter() - self.sent_at)
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            self.run.fail(f"connection lost: {exc}")


class _Run:
    """A fixed list of raw requests sent over `concurrency` connections, one in flight on each."""

    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.total = len(requests)
        self.sent = 0
        self.received = 0
        self.latencies: list[float] = []
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def next_request(self) -> bytes | None:
        if self.sent >= self.total or self.finished.done():
            return None
        self.sent += 1
        return self.requests[self.sent - 1]

    def done(self, latency_s: float) -> None:
        self.latencies.append(latency_s)
        self.received += 1
        if self.received == self.total and not self.finished.done():
            self.finished.set_result(None)

    def fail(self, why: str) -> None:
        if not self.finished.done():
            self.finished.set_exception(RuntimeError(why))


def _raw_requests(port: int, path: str, bodies: list[tuple[bytes, str]]) -> list[bytes]:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    return [
        f"{head}Content-Length: {len(body)}\r\n{SIGNATURE_HEADER}: {sig}\r\n\r\n".encode() + body
        for body, sig in bodies
    ]


def _bodies(kind: str, n: int, offset: int) -> list[tuple[bytes, str]]:
    """Echo: signed `{"key": ...}` bodies over KEYS keys; bare: one body of the same shape."""
    if kind == "bare":
        return [(b'{"key": "k0"}', "sha256=" + "0" * 64)] * n
    out = []
    for i in range(offset, offset + n):
        body = json.dumps({"key": f"k{i % KEYS}"}).encode()
        out.append((body, sign(SECRET, "POST", "/echo", body)))
    return out


async def _drive() -> None:
    """The load generator process: one JSON command a line on stdin, one JSON result a line out.

    Its own process, so its CPU never counts against a server's event loop; raw keep-alive
    HTTP/1.1 over asyncio protocols, because a full HTTP client costs more CPU per request than
    the bare server does and would make the driver the bottleneck.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        requests = _raw_requests(cmd["port"], cmd["path"], _bodies(cmd["kind"], cmd["n"], cmd["offset"]))
        run = _Run(requests)
        start = time.perf_counter()
        for _ in range(min(cmd["concurrency"], len(requests))):
            await loop.create_connection(lambda: _Conn(run), "127.0.0.1", cmd["port"])  # noqa: B023 -- called at once
        await run.finished
        elapsed = time.perf_counter() - start
        lat = sorted(run.latencies)
        result = {
            "rps": run.total / elapsed,
            "p50": lat[len(lat) // 2] * 1000,
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        }
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


class Driver:
    """The benchmark's handle on the load-generator subprocess."""

    async def __aenter__(self) -> Driver:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--drive", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def load(
        self, port: int, path: str, kind: str, n: int, concurrency: int, offset: int = 0
    ) -> dict[str, float]:
        """Send n requests, `concurrency` in flight; req/s and p50/p99 latency (ms)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        cmd = {"port": port, "path": path, "kind": kind, "n": n, "concurrency": concurrency, "offset": offset}
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        line = await asyncio.wait_for(self.proc.stdout.readline(), 300)
        if not line:
            raise RuntimeError(f"the load generator exited ({await self.proc.wait()})")
        return json.loads(line)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's main thread (its event loop) and of all its other threads (/proc)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        name = "event loop" if tid == str(pid) else "other threads"  # 3.11 names no OS threads
        fields = raw.rpartition(")")[2].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far; Linux /proc, else 0."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(
    requests: int, concurrency: int, rounds: int, cpu: int | None, before: str | None = None
) -> dict[str, dict[str, float]]:
    """All servers up at once; interleaved rounds (first server rotating) so machine noise hits
    each one alike. Medians of the rounds; `ratio` is the median of the per-round ratios.
    `cpu`: every server pinned to that CPU (the gateways by `[gateway] cpu`, the bare one alike).
    `before`: an installed copy of the package that a third echo gateway runs from."""
    port = free_port()
    bare = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-bare",
        str(port),
        *(["--cpu", str(cpu)] if cpu is not None else []),
        stdout=asyncio.subprocess.PIPE,
    )
    floor_port, floor_dir = free_port(), tempfile.mkdtemp(prefix="floor-")
    floor = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("floor_server.py")),
        str(floor_port),
        floor_dir,
        *(["--cpu", str(cpu)] if cpu is not None else []),
        stdout=asyncio.subprocess.PIPE,
    )
    per_round = requests // rounds
    try:
        assert bare.stdout is not None and floor.stdout is not None
        await asyncio.wait_for(bare.stdout.readline(), 30)
        await asyncio.wait_for(floor.stdout.readline(), 30)
        targets: dict[str, tuple[int, int, str, str]] = {
            BARE: (bare.pid, port, "/bare", "bare"),
            FLOOR: (floor.pid, floor_port, "/echo", "echo"),
        }
        async with AsyncExitStack() as stack:
            for access_log, code in ((True, None), (False, None), *(((True, before),) if before else ())):
                gw = await stack.enter_async_context(
                    GatewayHarness(
                        adapters={"echo": {"secret": SECRET}},
                        config={"gateway": {"access_log": access_log, **({"cpu": cpu} if cpu is not None else {})}},
                        pythonpath=[code] if code else (),
                    )
                )
                assert gw.pid is not None and gw.port is not None
                name = f"echo route (HMAC + durable write), access_log = {str(access_log).lower()}"
                targets[name + (f", {BEFORE} {code}" if code else "")] = (gw.pid, gw.port, "/echo", "echo")
            driver = await stack.enter_async_context(Driver())
            for _, tport, path, kind in targets.values():  # warm-up: connections, caches, every key once
                await driver.load(tport, path, kind, WARMUP, concurrency)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            names = list(targets)
            for i in range(rounds):
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    pid, tport, path, kind = targets[name]
                    cpu, threads = cpu_seconds(pid), thread_cpu(pid)
                    r = await driver.load(tport, path, kind, per_round, concurrency, WARMUP + i * per_round)
                    r["cpu_us"] = (cpu_seconds(pid) - cpu) / per_round * 1e6
                    for tname, used in thread_cpu(pid).items():
                        r[f"thread:{tname}"] = (used - threads.get(tname, 0.0)) / per_round * 1e6
                    runs[name].append(r)
    finally:
        for proc in (bare, floor):
            proc.kill()
            await proc.wait()
        shutil.rmtree(floor_dir, ignore_errors=True)
    out = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu_us")}
        for name, rs in runs.items()
    }
    for name, rs in runs.items():
        ratios = [r["rps"] / b["rps"] for r, b in zip(rs, runs[BARE])]
        out[name]["ratio"] = statistics.median(ratios)
        out[name]["ratio_min"] = min(ratios)
        out[name]["ratio_max"] = max(ratios)
        cpu = [r["cpu_us"] / b["cpu_us"] for r, b in zip(rs, runs[BARE]) if b["cpu_us"] > 0]
        out[name]["cpu_ratios"] = cpu  # type: ignore[assignment]
        out[name]["floor_rps"] = statistics.median(r["rps"] / f["rps"] for r, f in zip(rs, runs[FLOOR]))
        out[name]["floor_cpu"] = statistics.median(
            r["cpu_us"] / f["cpu_us"] if f["cpu_us"] > 0 else float("inf") for r, f in zip(rs, runs[FLOOR])
        )
        out[name]["rps_range"] = (min(r["rps"] for r in rs), max(r["rps"] for r in rs))  # type: ignore[assignment]
        out[name]["threads"] = {  # type: ignore[assignment]
            k[7:]: statistics.median(r.get(k, 0.0) for r in rs)
            for k in sorted({k for r in rs for k in r if k.startswith("thread:")})
        }
    return out


def populate(db: Path, rows: int) -> float:
    """`rows` live echo counters in one transaction; see the module doc. Returns seconds."""
    import sqlite3

    from chatstate import state

    t = time.perf_counter()
    store = state.open_keyed_store("echo", NAMESPACE, max_entries=rows * 2, path=db)
    try:
        store.register("row-0000000", {"count": 0})
    finally:
        store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(entries)")]
        made = {  # the columns that must differ per row; every other column is copied
            "key": "printf('row-%07d', n.i)",
            "value": "json_object('count', n.i)",
            "created_at": "entries.created_at + n.i",
            "version": "abs(random() >> 1) + 1",
        }
        select = ", ".join(made.get(c, f"entries.{c}") for c in columns)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            f"INSERT INTO entries ({', '.join(columns)}) SELECT {select} FROM entries, n "
            "WHERE entries.plugin_id = 'echo' AND entries.namespace = ? AND entries.key = 'row-0000000'",
            (rows - 1, NAMESPACE),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (live,) = conn.execute("SELECT count(*) FROM entries WHERE plugin_id = 'echo'").fetchone()
    finally:
        conn.close()
    if live != rows:
        raise RuntimeError(f"built {live} rows, wanted {rows}")
    return time.perf_counter() - t


def database_mib(db: Path) -> float:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20


async def restart_to_ready(rows: int, rounds: int = 5) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        state_dir = Path(tmp)
        db = state_dir / "plugin-state" / "state.sqlite"
        fill_s = await asyncio.to_thread(populate, db, rows)
        gw = GatewayHarness(
            adapters={"echo": {"secret": SECRET, "max_entries": rows * 2}},
            config={"state": {"plugin_max_live_rows": rows * 2}},
            state_dir=state_dir,
        )
        stops, starts, kills = [], [], []
        rss: list[float] = []
        async with gw:
            for _ in range(rounds):
                t = time.perf_counter()
                assert await gw.stop() == 0
                stops.append(time.perf_counter() - t)
                t = time.perf_counter()
                await gw.start()
                starts.append(time.perf_counter() - t)
                assert gw.pid is not None
                rss.append(rss_mib(gw.pid))
            for _ in range(rounds):
                await gw.kill()
                t = time.perf_counter()
                await gw.start()
                kills.append(time.perf_counter() - t)
            _, body = await gw.healthz()
            assert body["status"] == "ok"
            # the rows are there: a counter written before any restart is read back
            key = "row-0123456" if rows > 123456 else "row-0000000"
            raw = f"/echo/{key}"
            async with gw.http.get(gw.gateway_url + raw, headers={SIGNATURE_HEADER: sign(SECRET, "GET", raw)}) as resp:
                assert resp.status == 200, resp.status
                want = int(key[4:])
                got = (await resp.json())["count"]
                assert got == want, (got, want)
        db_mib = database_mib(db)
    return {
        "rows": rows,
        "fill_s": fill_s,
        "rss_mib": statistics.median(rss),
        "db_mib": db_mib,
        "stop_s": statistics.median(stops),
        "start_s": statistics.median(starts),
        "start_after_kill_s": statistics.median(kills),
        "start_max_s": max(starts + kills),
        "start_median_s": statistics.median(starts + kills),
    }


async def main(args: argparse.Namespace) -> int:
    failed = 0
    load_start = load_average()
    tp = await throughput(args.requests, args.concurrency, args.rounds, args.cpu, args.before)
    print(
        f"\nload average at start {load_start}, after the throughput rounds {load_average()}; {os.cpu_count()} CPUs; "
        f"servers {'pinned to CPU ' + str(args.cpu) if args.cpu is not None else 'not pinned'}"
    )
    print(
        f"{args.requests // args.rounds} requests per server per round, {args.rounds} interleaved rounds "
        f"(medians) after {WARMUP} warm-up, {args.concurrency} keep-alive connections with one request in "
        "flight each, load generator in its own process, loopback\n"
    )
    print(
        "| server | req/s (median [range]) | p50 ms | p99 ms | server CPU us/req | vs bare (median, min-max of rounds) "
        "| vs floor: req/s, CPU/req |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in tp.items():
        lo, hi = r["rps_range"]  # type: ignore[misc]
        print(
            f"| {name} | {r['rps']:.0f} [{lo:.0f}-{hi:.0f}] | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu_us']:.0f} | "
            f"{r['ratio']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
            f"{r['floor_rps']:.2f}x, {r['floor_cpu']:.2f}x |"
        )
    print("\nserver CPU us/request by thread (median of the rounds):\n")
    for name, r in tp.items():
        parts = ", ".join(f"{t} {us:.0f}" for t, us in r["threads"].items() if us >= 0.5)  # type: ignore[attr-defined]
        print(f"- {name}: {parts}")
    print("\n| target | per-round median [range] | target | verdict |")
    print("|---|---|---|---|")
    for name, r in tp.items():
        if name in (BARE, FLOOR):
            continue
        checked = "access_log = true" in name and BEFORE not in name
        for label, value, ok, target in (
            ("req/s vs floor", r["floor_rps"], r["floor_rps"] >= FLOOR_RPS, f">= {FLOOR_RPS}x"),
            ("server CPU/request vs floor", r["floor_cpu"], r["floor_cpu"] <= FLOOR_CPU, f"<= {FLOOR_CPU}x"),
        ):
            verdict = ("ok" if ok else "MISSED") if checked else "info"
            failed += verdict == "MISSED"
            print(f"| {name}: {label} | {value:.2f}x | {target} | {verdict} |")
        cpu = r["cpu_ratios"]  # type: ignore[assignment]
        cpu_med = statistics.median(cpu) if cpu else float("inf")
        for label, value, lo, hi, ok in (
            ("req/s vs bare", r["ratio"], r["ratio_min"], r["ratio_max"], r["ratio"] >= 0.5),
            ("server CPU/request vs bare", cpu_med, min(cpu, default=0), max(cpu, default=0), cpu_med <= 2.0),
        ):
            verdict = ("ok" if ok else "MISSED") if checked else "info"
            failed += verdict == "MISSED"
            target = ">= 0.5x" if label.startswith("req") else "<= 2.0x"
            print(f"| 1. {name}: {label} | {value:.2f}x [{lo:.2f}-{hi:.2f}] | {target} | {verdict} |")
    sys.stdout.flush()
    if args.rows > 0:
        rr = await restart_to_ready(args.rows, args.restarts)
        ok = rr["start_median_s"] < 1.0
        failed += not ok
        print(
            f"\nrestart with {rr['rows']:,} live rows (median of {args.restarts} each; built in {rr['fill_s']:.1f} s; "
            f"load average {load_average()})\n"
        )
        print("| step | seconds |")
        print("|---|---:|")
        print(f"| SIGTERM -> exited (drain, final sweep, checkpoint) | {rr['stop_s']:.3f} |")
        print(f"| start -> /healthz ready, after SIGTERM | {rr['start_s']:.3f} |")
        print(f"| start -> /healthz ready, after SIGKILL | {rr['start_after_kill_s']:.3f} |")
        print(
            f"| start -> ready, median of all {2 * args.restarts} (target < 1 s) | {rr['start_median_s']:.3f} {'ok' if ok else 'MISSED'} |"
        )
        print(f"| slowest start of the {2 * args.restarts} | {rr['start_max_s']:.3f} |")
        print(f"\nready gateway's RSS {rr['rss_mib']:.1f} MiB; database (+ -wal, -shm) {rr['db_mib']:.1f} MiB")
    return verdict_exit(failed)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=21_000, help="requests per server, split over the rounds")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="keep-alive connections, one request in flight each"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rows", type=int, default=1_000_000, help="live rows for the restart timing (0 = skip it)")
    parser.add_argument("--restarts", type=int, default=5, help="SIGTERM restarts, and as many SIGKILL restarts")
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds of 500 requests, 10,000 rows, 1 restart each: a smoke run"
    )
    parser.add_argument(
        "--cpu", type=int, help="pin every server to this CPU ([gateway] cpu; the bare one alike); default: not pinned"
    )
    parser.add_argument(
        "--before", help="also run an echo gateway from this installed copy (pip install --no-deps --target DIR)"
    )
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve_bare:
        pin_process(ns.cpu)
        asyncio.run(_serve_bare(ns.serve_bare))
    elif ns.drive:
        asyncio.run(_drive())
    else:
        if ns.quick:
            ns.requests, ns.rounds, ns.rows, ns.restarts = 1_000, 2, 10_000, 1
        ns.before = ns.before and check_before(parser, ns.before)
        # The gateways run from an empty folder: `python -m chatstate` puts its working directory
        # first on the path, so started from a checkout, the --before gateway would run the checkout.
        with tempfile.TemporaryDirectory() as away, contextlib.chdir(away):
            sys.exit(asyncio.run(main(ns)))

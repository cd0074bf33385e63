"""Gateway benchmark: echo route vs a bare aiohttp handler, and restart-to-ready with 100k rows.

    python benchmarks/gateway_bench.py [--requests 3000] [--concurrency 16] [--rows 100000]

Both servers are real subprocesses on loopback, loaded in the same run by the same bounded
client (a fixed number of requests, at most `--concurrency` in flight). The echo route verifies
an HMAC and does one awaited durable write (a lookup and a register) per request; the bare
handler does nothing. Targets (issue 4): echo >= 0.5x bare throughput; restart-to-ready with
100,000 live rows < 1 s. Prints a Markdown table (docs/performance.md, "## Gateway").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.echo import NAMESPACE, sign  # noqa: E402
from gateway.sim.harness import GatewayHarness, free_port  # noqa: E402

SECRET = "bench-secret"
WARMUP = 200


async def _serve_bare(port: int) -> None:
    from aiohttp import web

    async def bare(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/bare", bare)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def load(url: str, bodies: list[tuple[bytes, dict[str, str]]], concurrency: int) -> dict[str, float]:
    """Send every body once, `concurrency` at a time; req/s and latency percentiles (ms)."""
    latencies: list[float] = []
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            while not queue.empty():
                body, headers = queue.get_nowait()
                t = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append((time.perf_counter() - t) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(bodies) / elapsed,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def _echo_bodies(n: int, offset: int) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for i in range(offset, offset + n):
        body = json.dumps({"key": f"k{i % 1000}"}).encode()
        out.append((body, {"X-Echo-Signature": sign(SECRET, "POST", "/echo", body)}))
    return out


async def throughput(requests: int, concurrency: int, rounds: int) -> dict[str, dict[str, float]]:
    """All servers up at once; interleaved rounds so machine noise hits each one alike."""
    port = free_port()
    bare = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-bare", str(port), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert bare.stdout is not None
        await asyncio.wait_for(bare.stdout.readline(), 30)
        per_round = requests // rounds
        bare_bodies = [(b'{"key": "k"}', {"X-Echo-Signature": "x"})] * per_round
        targets = {"bare aiohttp handler": (f"http://127.0.0.1:{port}/bare", lambda i: bare_bodies)}
        async with AsyncExitStack() as stack:
            for access_log in (True, False):
                gw = await stack.enter_async_context(GatewayHarness(
                    adapters={"echo": {"secret": SECRET}}, config={"gateway": {"access_log": access_log}}))
                name = f"echo route (HMAC + durable write), access_log = {str(access_log).lower()}"
                targets[name] = (f"{gw.gateway_url}/echo", lambda i: _echo_bodies(per_round, WARMUP + i * per_round))
            for url, bodies in targets.values():  # warm-up
                await load(url, _echo_bodies(WARMUP, 0) if "echo" in url else bare_bodies[:WARMUP], concurrency)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for i in range(rounds):
                for name, (url, bodies) in targets.items():
                    runs[name].append(await load(url, bodies(i), concurrency))
    finally:
        bare.kill()
        await bare.wait()
    return {name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")} for name, rs in runs.items()}


def populate(db: Path, rows: int) -> float:
    import state

    settings = state.StoreSettings(plugin_max_live_rows=rows * 2)
    store = state.open_keyed_store("echo", NAMESPACE, max_entries=rows * 2, path=db, settings=settings)
    t = time.perf_counter()
    try:
        for i in range(rows):
            store.register(f"row-{i:06d}", {"count": i})
    finally:
        store.close()
    return time.perf_counter() - t


async def restart_to_ready(rows: int, rounds: int = 5) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        state_dir = Path(tmp)
        db = state_dir / "plugin-state" / "state.sqlite"
        fill_s = await asyncio.to_thread(populate, db, rows)
        gw = GatewayHarness(
            adapters={"echo": {"secret": SECRET, "max_entries": rows * 2}},
            config={"state": {"plugin_max_live_rows": rows * 2}}, state_dir=state_dir,
        )
        stops, starts, kills = [], [], []
        async with gw:
            for _ in range(rounds):
                t = time.perf_counter()
                assert await gw.stop() == 0
                stops.append(time.perf_counter() - t)
                t = time.perf_counter()
                await gw.start()
                starts.append(time.perf_counter() - t)
            for _ in range(rounds):
                await gw.kill()
                t = time.perf_counter()
                await gw.start()
                kills.append(time.perf_counter() - t)
            _, body = await gw.healthz()
            assert body["status"] == "ok"
    return {"rows": rows, "fill_s": fill_s, "stop_s": statistics.median(stops),
            "start_s": statistics.median(starts), "start_after_kill_s": statistics.median(kills),
            "start_max_s": max(starts + kills)}


async def main(args: argparse.Namespace) -> None:
    tp = await throughput(args.requests, args.concurrency, args.rounds)
    rr = await restart_to_ready(args.rows)
    bare = tp["bare aiohttp handler"]["rps"]
    print(f"\n{args.requests} requests per server in {args.rounds} interleaved rounds (medians) after "
          f"{WARMUP} warm-up, {args.concurrency} in flight, loopback\n")
    print("| server | req/s | p50 ms | p99 ms | vs bare |")
    print("|---|---:|---:|---:|---:|")
    for name, r in tp.items():
        print(f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps'] / bare:.2f}x |")
    print(f"\nrestart with {rr['rows']:,} live rows (median of 5; filled in {rr['fill_s']:.1f} s)\n")
    print("| step | seconds |")
    print("|---|---:|")
    print(f"| SIGTERM -> exited (drain, final sweep, checkpoint) | {rr['stop_s']:.3f} |")
    print(f"| start -> /healthz ready, after SIGTERM | {rr['start_s']:.3f} |")
    print(f"| start -> /healthz ready, after SIGKILL | {rr['start_after_kill_s']:.3f} |")
    print(f"| slowest start of the 10 | {rr['start_max_s']:.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    asyncio.run(_serve_bare(ns.serve_bare) if ns.serve_bare else main(ns))

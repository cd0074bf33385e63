"""The floor for the echo route: plain aiohttp doing only what the route must.

    python benchmarks/floor_server.py PORT DIR [--cpu N]    # prints "ready" once it listens

POST /echo: verify the HMAC exactly as the echo plugin does (gateway/echo.py's `sign`), parse
`{"key": ...}`, add one to that key's counter (kept in a dict, as echo keeps its counters in
memory), write the new count durably — one upsert (the store's own statement, on the store's
schema, WAL, synchronous=NORMAL) through one writer thread that commits whatever queued up
meanwhile in one transaction (group commit) — and answer `{"key", "count"}` after the COMMIT.
No validation layer, no metrics, no access log, no eviction: whatever the echo route spends
beyond this is overhead (benchmarks/gateway_bench.py runs both side by side).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import queue
import sqlite3
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_support import serve_app  # noqa: E402

from chatstate.gateway.cpu import pin_process  # noqa: E402
from chatstate.gateway.echo import SIGNATURE_HEADER, sign  # noqa: E402
from chatstate.state import _sqlite as sql  # noqa: E402
from chatstate.state._files import SCHEMA  # noqa: E402

SECRET = "bench-secret"


class Writer:
    """One thread, one connection: each wake-up commits every write queued so far in one
    transaction, then answers their futures (each with its statement's rowcount) in one
    call_soon_threadsafe."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.calls: queue.SimpleQueue[tuple[asyncio.Future[int], str, tuple[object, ...]]] = queue.SimpleQueue()
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        for statement in SCHEMA:
            self.conn.execute(statement)
        threading.Thread(target=self.run, daemon=True).start()

    def write(self, params: tuple[object, ...], statement: str = sql.SQL_UPSERT) -> asyncio.Future[int]:
        future = self.loop.create_future()
        self.calls.put((future, statement, params))
        return future

    def run(self) -> None:
        while True:
            batch = [self.calls.get()]
            while True:
                try:
                    batch.append(self.calls.get_nowait())
                except queue.Empty:
                    break
            self.conn.execute("BEGIN IMMEDIATE")
            counts = [self.conn.execute(statement, params).rowcount for _, statement, params in batch]
            self.conn.execute("COMMIT")
            self.loop.call_soon_threadsafe(_answer, [(f, n) for (f, _, _), n in zip(batch, counts)])


def _answer(answers: list[tuple[asyncio.Future[int], int]]) -> None:
    for f, rowcount in answers:
        if not f.done():
            f.set_result(rowcount)


async def serve(port: int, directory: Path) -> None:
    from aiohttp import web

    writer = Writer(directory / "floor.sqlite", asyncio.get_running_loop())
    counts: dict[str, int] = {}
    version = iter(range(1, 2**62))

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not hmac.compare_digest(given.encode(), sign(SECRET, request.method, request.raw_path, body).encode()):
            raise web.HTTPUnauthorized(text="bad signature")
        key = json.loads(body)["key"]
        count = counts[key] = counts.get(key, 0) + 1
        now = time.time_ns() // 1_000_000
        await writer.write(("echo", "echo.counters", key, now, json.dumps(count), None, next(version)))
        return web.json_response({"key": key, "count": count})

    app = web.Application()
    app.router.add_post("/echo", echo)
    await serve_app(app, port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--cpu", type=int)
    args = parser.parse_args()
    pin_process(args.cpu)
    asyncio.run(serve(args.port, args.dir))

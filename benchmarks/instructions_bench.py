"""Instructions per request of the echo route and of its floor, counted by valgrind's callgrind.

    python benchmarks/instructions_bench.py [--requests 2000] [--before DIR] [--quick]

The servers of `gateway_bench.py` (the floor, the echo gateway with its access log on and off,
and with `--before DIR` an echo gateway run from that installed copy) each run alone under
`valgrind --tool=callgrind`, counting nothing while they start and take `gateway_bench.py`'s
warm-up; then `--requests` requests from the same load generator (16 keep-alive connections)
are counted, per thread. Instructions are not time, but they do not move with the machine's
other work: on a shared 2-CPU box, two runs of one server agree within ~1%, where req/s and CPU
time move by 10% and more between identical servers in the same rounds. So this is the view for
a change of a few percent; `gateway_bench.py` gives the goal's own ratios.

Needs valgrind (callgrind_control comes with it); user-space instructions only (the kernel's
share of a syscall is not counted), and valgrind serializes the threads, so a writer thread's
batches are larger than at full speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_support import check_before, load_average  # noqa: E402
from gateway_bench import FLOOR, SECRET, WARMUP, Driver  # noqa: E402

from chatstate.gateway.sim.harness import GatewayHarness, free_port  # noqa: E402

READY_TIMEOUT_S = 300  # a gateway starts ~50x slower under callgrind
ECHO = "echo route (HMAC + durable write), access_log = "


async def _listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Return once `port` accepts connections (the server under valgrind is slow to start)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before listening")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"not listening after {READY_TIMEOUT_S} s")


def _dumped(out: Path) -> list[int]:
    """Instructions per thread in callgrind's first dump (`<out>.1-<thread>`, the event loop first)."""
    counts = []
    for path in sorted(out.parent.glob(out.name + ".1-*")):
        match = re.search(r"^(?:totals|summary):\s*(\d+)", path.read_text(errors="replace"), re.M)
        if match:
            counts.append(int(match.group(1)))
    return counts


async def count(command: list[str], port: int, work: Path, requests: int, pythonpath: str | None) -> list[float]:
    """Instructions per request of each thread of the server `command` (the event loop first)."""
    out = work / "callgrind.out"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes"]
    env = None if pythonpath is None else {**os.environ, "PYTHONPATH": pythonpath}
    with open(work / "server.log", "ab") as log:
        # cwd: an empty folder, so `python -m chatstate` runs the code on its path, not a checkout
        proc = subprocess.Popen(
            [*valgrind, f"--callgrind-out-file={out}", *command], cwd=work, env=env, stdout=log, stderr=log
        )
    try:
        await _listening(port, proc)
        async with Driver() as driver:
            await driver.load(port, "/echo", "echo", WARMUP, 16)
            subprocess.run(["callgrind_control", "--instr=on", str(proc.pid)], check=True, capture_output=True)
            await driver.load(port, "/echo", "echo", requests, 16, WARMUP)
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return [n / requests for n in _dumped(out) if n]


async def main(args: argparse.Namespace) -> None:
    servers: list[tuple[str, bool | None, str | None]] = [(FLOOR, None, None), (ECHO + "true", True, None)]
    servers.append((ECHO + "false", False, None))
    if args.before:
        servers.append((f"{ECHO}true, code before: {args.before}", True, args.before))
    rows: dict[str, list[float]] = {}
    load_start = load_average()
    for name, access_log, code in servers:
        work = Path(tempfile.mkdtemp(prefix="instructions-"))
        try:
            port = free_port()
            if access_log is None:
                command = [sys.executable, str(Path(__file__).with_name("floor_server.py")), str(port), str(work)]
            else:
                gw = GatewayHarness(
                    adapters={"echo": {"secret": SECRET}},
                    config={"gateway": {"access_log": access_log}},
                    state_dir=work / "state",
                )
                gw.port = port
                command = [sys.executable, "-m", "chatstate", "start", "--config", str(gw.write_config())]
            rows[name] = await count(command, port, work, args.requests, code)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at start {load_start}, at end {load_average()} (instructions do not depend on it)")
    print(f"{args.requests} requests counted per server after {WARMUP} warm-up, 16 keep-alive connections\n")
    print("| server | k instructions/request: all threads | event loop | others | vs floor: all, event loop |")
    print("|---|---:|---:|---:|---:|")
    floor_all, floor_loop = sum(rows[FLOOR]), rows[FLOOR][0]
    for name, per in rows.items():
        total, loop = sum(per), per[0]
        print(
            f"| {name} | {total / 1000:.1f} | {loop / 1000:.1f} | {(total - loop) / 1000:.1f} | "
            f"{total / floor_all:.3f}x, {loop / floor_loop:.3f}x |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests counted per server")
    parser.add_argument("--before", help="also count an echo gateway run from this installed copy")
    parser.add_argument("--quick", action="store_true", help="200 requests per server: a smoke run")
    ns = parser.parse_args()
    if ns.quick:
        ns.requests = 200
    ns.before = ns.before and check_before(parser, ns.before)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("needs valgrind (callgrind) on the PATH")
    asyncio.run(main(ns))

"""What the benchmark scripts share: the options of a benchmark run in interleaved rounds, the
machine line and the `median [min-max]` cells of their reports, their verdict and exit code,
and the little HTTP server a baseline runs in its own process."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from chatstate.gateway.cpu import pin_process  # the scripts put the checkout on sys.path first

if TYPE_CHECKING:
    from aiohttp import web

CPU_HELP = "pin the whole run to this CPU, as [gateway] cpu pins a gateway; default: not pinned"


def rounds_options(doc: str, *, calls: int, quick_calls: int, calls_help: str) -> argparse.ArgumentParser:
    """The options of a run in rounds: --rounds, --calls, --quick (3 rounds of `quick_calls`) and
    --cpu; `parse_rounds` reads them."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=calls, help=calls_help)
    parser.add_argument("--quick", action="store_true", help=f"3 rounds of {quick_calls}: a smoke run")
    parser.add_argument("--cpu", type=int, help=CPU_HELP)
    parser.set_defaults(quick_calls=quick_calls)
    return parser


def parse_rounds(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse `rounds_options`' options (--quick overriding --rounds and --calls) and pin the
    process to --cpu."""
    ns = parser.parse_args()
    if ns.quick:
        ns.rounds, ns.calls = 3, ns.quick_calls
    pin_process(ns.cpu)
    return ns


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(load_start: str, load_end: str, cpu: int | None) -> str:
    """The report's machine line: the load before and after the rounds, the CPUs, the pin."""
    pinned = f"pinned to CPU {cpu}" if cpu is not None else "not pinned"
    return f"load average at start {load_start}, at end {load_end}; {os.cpu_count()} CPUs; {pinned}"


def median_range(values: list[float], fmt: str = "{:.2f}") -> str:
    """`median [min-max]` of per-round values."""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def verdict_exit(failed: int) -> int:
    """Print the last line of the report; the exit code: 0 when every target was met, else 1."""
    print(f"\n{'all targets met' if not failed else f'{failed} target(s) missed'}")
    return 1 if failed else 0


async def serve_app(app: web.Application, port: int) -> None:
    """Serve `app` on 127.0.0.1:`port` without an access log, say "ready" on stdout (the parent
    waits for that line), and serve until killed."""
    from aiohttp import web  # only the server processes load aiohttp

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def check_before(parser: argparse.ArgumentParser, before: str) -> str:
    """`--before DIR`, resolved, once a gateway started from an empty folder (as the benches start
    theirs: `python -m chatstate` puts its working directory first on the path, so from a
    checkout it would run the checkout) with DIR on its path runs DIR's code; else exit 2."""
    if not (Path(before) / "chatstate" / "state" / "__init__.py").is_file():
        # a checkout's chatstate/ holds only the top module: the rest would silently be this tree's
        parser.error(
            f"--before {before}: no installed chatstate there; make one with "
            f"pip install --no-deps --target {before} <checkout of the code to compare>"
        )
    probe = "import chatstate.gateway.server as s; print(s.__file__)"
    with tempfile.TemporaryDirectory() as elsewhere:
        env = {**os.environ, "PYTHONPATH": before}
        found = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True)
    code = Path(found.stdout.strip()).resolve() if found.returncode == 0 else None
    if code is None or not code.is_relative_to(Path(before).resolve()):
        parser.error(f"--before {before}: a gateway started with it on its path runs {code or 'nothing'}")
    return str(Path(before).resolve())

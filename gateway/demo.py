"""`chatstate demo`: the same four conversations across a gateway restart, with the legacy
in-memory maps and with the keyed store, checked against what the simulators recorded.

It starts the platform simulators and a real gateway subprocess on free loopback ports, plays
each adapter's first half, restarts the gateway (SIGKILL by default), plays the second half,
and prints a table. Exit 0 only when every keyed-store row survived and every legacy row
showed the expected loss; 1 otherwise. Every process and temp dir it made is cleaned up, also
on Ctrl-C (the harness's async context managers run on cancellation).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

ADAPTERS = ("slack", "discord", "teams", "matrix")
TRANSPORTS = {  # --transport: which transports to play (issue 19)
    "http": ("http",),
    "websocket": ("websocket",),  # Slack Socket Mode and the Discord Gateway
    "both": ("http", "websocket"),
}
Mode = Literal["legacy", "store"]


@dataclass(frozen=True)
class Row:
    adapter: str
    behaviour: str
    legacy_survived: bool
    store_survived: bool
    legacy_detail: str
    store_detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.store_survived and not self.legacy_survived


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="restart a real gateway mid-conversation for every adapter, legacy maps vs keyed store",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--state-dir", help="keep the demo's state and logs here (default: a temp dir, removed)")
    p.add_argument("--kill", choices=("term", "kill"), default="kill",
                   help="how to stop the gateway mid-conversation: SIGTERM or SIGKILL (default)")
    p.add_argument("--only", default=",".join(ADAPTERS),
                   help="comma-separated adapters to play (default: slack,discord,teams,matrix)")
    p.add_argument("--transport", choices=tuple(TRANSPORTS), default="http",
                   help="http: Events API / interactions endpoint (default); websocket: Slack Socket Mode and "
                        "the Discord Gateway (slack and discord rows only); both: every row of each")
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON document")


def run(args: argparse.Namespace) -> int:
    """Entry point for `chatstate demo`; returns the exit code (0 pass, 1 fail, 2 bad usage)."""
    only = [a.strip() for a in args.only.split(",") if a.strip()]
    unknown = [a for a in only if a not in ADAPTERS]
    if unknown or not only:
        print(f"gateway demo: --only takes some of {','.join(ADAPTERS)}; got {args.only!r}", file=sys.stderr)
        return 2
    say = (lambda *_: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    own_dir = args.state_dir is None
    root = Path(tempfile.mkdtemp(prefix="chatstate-demo-")) if own_dir else Path(args.state_dir)
    try:
        rows = asyncio.run(_play_transports(only, args.kill, root, say, TRANSPORTS[args.transport]))
    except KeyboardInterrupt:
        print("\ninterrupted: simulators and gateway stopped", file=sys.stderr)
        return 130
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    ok = all(r.passed for r in rows)
    if args.json:
        print(json.dumps({"ok": ok, "kill": args.kill, "transport": args.transport, "rows": [asdict(r) | {"passed": r.passed} for r in rows]}, indent=2))
    else:
        signal_name = "SIGKILL" if args.kill == "kill" else "SIGTERM"
        print(f"Each conversation was split by a gateway restart ({signal_name}).\n")
        print(render_table(rows))
        print("\nPASS: every conversation survived with the keyed store and was lost without it."
              if ok else "\nFAIL: see the rows above.")
    return 0 if ok else 1


async def _play_transports(only: list[str], kill: str, root: Path, say: Any, transports: tuple[str, ...]) -> list[Row]:
    """HTTP rows keep their names and state dirs; websocket rows say their transport
    ("slack (socket mode)", "discord (gateway)") and play in `<root>/websocket/`."""
    from chatstate.gateway.sim.scenarios import WEBSOCKET_SCENARIOS

    rows: list[Row] = []
    for transport in transports:
        if transport == "http":
            rows += await _play(only, kill, root, say)
            continue
        chosen = [a for a in only if a in WEBSOCKET_SCENARIOS]
        if chosen:
            say(f"\n#### transport: Slack Socket Mode / Discord Gateway ({', '.join(chosen)})")
            rows += await _play(chosen, kill, root / "websocket", say, websocket=True)
    return rows


async def _play(only: list[str], kill: str, root: Path, say: Any, *, websocket: bool = False) -> list[Row]:
    results: dict[Mode, dict[tuple[str, str], tuple[bool, str, float]]] = {}
    for mode in ("legacy", "store"):
        results[mode] = await _play_mode(mode, only, kill, root / mode, say, websocket=websocket)
    rows = []
    for (adapter, behaviour), (legacy_ok, legacy_detail, legacy_s) in results["legacy"].items():
        store_ok, store_detail, store_s = results["store"].get((adapter, behaviour), (False, "not run", 0.0))
        rows.append(Row(adapter, behaviour, legacy_ok, store_ok, legacy_detail, store_detail, legacy_s + store_s))
    return rows


async def _play_mode(
    mode: Mode, only: list[str], kill: str, state_dir: Path, say: Any, *, websocket: bool = False,
) -> dict[tuple[str, str], tuple[bool, str, float]]:
    from chatstate.gateway.sim.harness import GatewayHarness
    from chatstate.gateway.sim.scenarios import SCENARIOS, TRANSPORT_LABELS, WEBSOCKET_SCENARIOS

    scenarios = [(WEBSOCKET_SCENARIOS if websocket else SCENARIOS)[a] for a in only]
    sims = [s.make_simulator() for s in scenarios]
    label = "legacy in-memory maps" if mode == "legacy" else "keyed store (SQLite)"
    say(f"\n== {label} ==")
    t0 = time.monotonic()
    state_dir.mkdir(parents=True, exist_ok=True)
    async with GatewayHarness(sims, modes=mode, state_dir=state_dir,
                              adapters={s.adapter: s.adapter_config for s in scenarios if s.adapter_config}) as gw:
        say(f"  gateway ready on {gw.gateway_url} (pid {gw.pid}) in {time.monotonic() - t0:.1f} s")
        timings: dict[str, float] = {}
        contexts = []
        for scenario, sim in zip(scenarios, sims):
            t = time.monotonic()
            contexts.append(await scenario.first_half(sim))
            timings[scenario.adapter] = time.monotonic() - t
            say(f"  {scenario.adapter:<8} first half done")
        t = time.monotonic()
        code = await (gw.stop() if kill == "term" else gw.kill())
        for i, scenario in enumerate(scenarios):
            if scenario.while_down is not None:  # e.g. a Discord Gateway dispatch while down
                contexts[i] = await scenario.while_down(sims[i], contexts[i])
        await gw.start()
        say(f"  gateway {'SIGKILLed' if kill == 'kill' else 'stopped by SIGTERM'} (exit {code}) "
            f"and back in {time.monotonic() - t:.1f} s")
        out: dict[tuple[str, str], tuple[bool, str, float]] = {}
        for scenario, sim, ctx in zip(scenarios, sims, contexts):
            t = time.monotonic()
            outcomes = await scenario.second_half(sim, ctx)
            spent = timings[scenario.adapter] + time.monotonic() - t
            for o in outcomes:
                adapter = TRANSPORT_LABELS[o.adapter] if websocket else o.adapter
                out[(adapter, o.behaviour)] = (o.survived, o.detail, spent / len(outcomes))
                say(f"  {adapter:<8} {o.behaviour}: {'works' if o.survived else 'LOST'} ({o.detail})")
    return out


def render_table(rows: list[Row]) -> str:
    head = ("adapter", "behaviour", "legacy after restart", "keyed store after restart", "time")
    body = [
        (r.adapter, r.behaviour, "lost (expected)" if not r.legacy_survived else "kept (UNEXPECTED)",
         "works" if r.store_survived else "LOST (FAIL)", f"{r.seconds * 1000:.0f} ms")
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(b) for b in body)])

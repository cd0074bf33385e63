"""`chatstate demo`: the same four conversations across a gateway restart, with the legacy
in-memory maps and with the keyed store, checked against what the simulators recorded.

It starts the platform simulators and a real gateway subprocess on free loopback ports, plays
each adapter's first half, restarts the gateway (SIGKILL by default), plays the second half,
and prints a table. Exit 0 only when every keyed-store row survived and every legacy row
showed the expected loss; 1 otherwise. `--hostile` plays the same conversations against
simulators with every platform edge behaviour on (retries, duplicates, rate limits, deadlines)
and adds a table of the edge behaviours the simulators actually played. Every process and temp
dir it made is cleaned up, also on Ctrl-C (exit 130: the harness's async context managers run
on cancellation).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatstate.gateway.registry import BUNDLED

if TYPE_CHECKING:
    from chatstate.gateway.settings import Mode

ADAPTERS = tuple(a for a in BUNDLED if a != "echo")  # every bundled adapter has a scenario (gateway/sim/scenarios.py)
TRANSPORTS = {  # --transport: which transports to play
    "http": ("http",),
    "websocket": ("websocket",),  # Slack Socket Mode and the Discord Gateway
    "both": ("http", "websocket"),
}


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
    """The `demo` subcommand; a new option is one `add_argument` here and one field of `Options`."""
    p = sub.add_parser(
        "demo",
        help="restart a real gateway mid-conversation for every adapter, legacy maps vs keyed store",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--state-dir",
        metavar="D",
        help="keep each run's state and logs in a new D/run-<time>-<id> folder (default: a temp dir, removed)",
    )
    p.add_argument(
        "--kill",
        choices=("term", "kill"),
        default="kill",
        help="how to stop the gateway mid-conversation: SIGTERM or SIGKILL (default)",
    )
    p.add_argument(
        "--only",
        default=",".join(ADAPTERS),
        help="comma-separated adapters to play, each once (default: slack,discord,teams,matrix)",
    )
    p.add_argument(
        "--transport",
        choices=tuple(TRANSPORTS),
        default="http",
        help="http: Events API / interactions endpoint (default); websocket: Slack Socket Mode and "
        "the Discord Gateway (slack and discord rows only); both: every row of each",
    )
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON document")
    p.add_argument(
        "--hostile",
        action="store_true",
        help="turn every simulated platform edge behaviour on (retries, duplicate deliveries, "
        "429/5xx, deadlines, double clicks) and show which were hit",
    )


@dataclass(frozen=True)
class Options:
    """What one demo run plays; built from the command line by `options()`."""

    only: tuple[str, ...]
    kill: str
    json: bool
    keep_in: Path | None  # --state-dir: the parent of this run's own folder
    transport: str = "http"  # a key of TRANSPORTS
    hostile: bool = False  # every simulator edge behaviour on


def options(args: argparse.Namespace) -> Options:
    """Check the command line. Raises ValueError with the message for bad usage (exit 2)."""
    only = tuple(dict.fromkeys(a.strip() for a in args.only.split(",") if a.strip()))  # once each, in order
    unknown = [a for a in only if a not in ADAPTERS]
    if unknown or not only:
        raise ValueError(f"--only takes some of {','.join(ADAPTERS)}; got {args.only!r}")
    keep_in = Path(args.state_dir).expanduser().absolute() if args.state_dir else None
    return Options(only, args.kill, args.json, keep_in, args.transport, bool(getattr(args, "hostile", False)))


def run(args: argparse.Namespace, *, exiting: bool = False) -> int:
    """Entry point for `chatstate demo`; returns the exit code (0 pass, 1 fail, 2 bad usage, 130
    Ctrl-C). The caller's SIGINT handler is given back on return, unless the process is `exiting`
    next (the command line), where a late second Ctrl-C stays ignored rather than cut the exit short.

    Ctrl-C is handled here, not by asyncio.run's default: the first SIGINT cancels the demo once
    and every later one is ignored, so the cleanup (stop the gateway, the simulators, close
    every client session, remove the temp dir) always runs to the end; whatever exception the
    cancellation surfaces as, the result is exit 130 and one line, never a traceback.
    """
    try:
        opts = options(args)
    except ValueError as exc:
        print(f"gateway demo: {exc}", file=sys.stderr)
        return 2
    from chatstate.gateway.sim.harness import GatewayStartError  # here: `--help` stays light

    say = (lambda *_: None) if opts.json else (lambda text: print(text, file=sys.stderr, flush=True))
    interrupted = threading.Event()
    caller_sigint = signal.getsignal(signal.SIGINT)
    root: Path | None = None
    hits: dict[str, dict[str, int]] = {}  # adapter -> edge behaviour -> times the simulators played it
    try:
        root = _run_dir(opts.keep_in)
        if opts.keep_in is not None:
            say(f"keeping this run's state and logs in {root}")
        rows = asyncio.run(_interruptible(_play_transports(opts, root, say, hits), interrupted))
    except BaseException as exc:
        if interrupted.is_set():
            rows = None
        elif isinstance(exc, GatewayStartError):  # e.g. a typo in a reply hook: its own line, no traceback
            why = [x for x in exc.log_tail.splitlines() if x.startswith("gateway:")][-1:]
            print(f"gateway demo: the gateway failed to start (exit {exc.exit_code})", *why, sep="\n", file=sys.stderr)
            return 2 if exc.exit_code == 2 else 1  # 2: its config, as `chatstate start` says
        else:
            raise
    finally:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the temp dir is removed
            if opts.keep_in is None and root is not None:
                shutil.rmtree(root, ignore_errors=True)
        finally:
            if not exiting:
                signal.signal(signal.SIGINT, caller_sigint if caller_sigint is not None else signal.SIG_DFL)
    if rows is None or interrupted.is_set():
        print("\ninterrupted: simulators and gateway stopped", file=sys.stderr)
        return 130
    ok = all(r.passed for r in rows)
    if opts.json:
        doc: dict[str, Any] = {
            "ok": ok,
            "kill": opts.kill,
            "transport": opts.transport,
            "state_dir": str(root) if opts.keep_in else None,
            "rows": [asdict(r) | {"passed": r.passed} for r in rows],
        }
        if opts.hostile:
            doc["hostile"] = hits
        print(json.dumps(doc, indent=2))
    else:
        signal_name = "SIGKILL" if opts.kill == "kill" else "SIGTERM"
        print(f"Each conversation was split by a gateway restart ({signal_name}).\n")
        print(render_table(rows))
        print(f"\n{TIME_NOTE}")
        if opts.hostile:
            print("\nEdge behaviours the simulators played (legacy and store runs together):\n")
            print(render_hits(hits, list(opts.only)))
        print(
            "\nPASS: every conversation survived with the keyed store and was lost without it."
            if ok
            else "\nFAIL: see the rows above."
        )
    return 0 if ok else 1


def _run_dir(keep_in: Path | None) -> Path:
    """This run's own folder: a new `run-<time>-<id>` under --state-dir (so a rerun never meets
    an earlier run's rows or overwrites its logs), or a temp dir; 0700 whatever the umask."""
    if keep_in is None:
        return Path(tempfile.mkdtemp(prefix="chatstate-demo-"))
    missing = [p for p in (keep_in, *keep_in.parents) if not p.exists()]
    keep_in.mkdir(parents=True, exist_ok=True)
    for p in missing:
        os.chmod(p, 0o700)  # mkdir's mode is masked by the umask
    return Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%dT%H%M%S-"), dir=keep_in))


async def _interruptible(play: Awaitable[list[Row]], interrupted: threading.Event) -> list[Row]:
    task = asyncio.ensure_future(play)

    def on_sigint() -> None:
        if not interrupted.is_set():  # the first Ctrl-C cancels; later ones must not cut the cleanup short
            interrupted.set()
            task.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # until run() has removed the temp dir


async def _play_transports(opts: Options, root: Path, say: Any, hits: dict[str, dict[str, int]]) -> list[Row]:
    """HTTP rows keep their names and state dirs; websocket rows say their transport
    ("slack (socket mode)", "discord (gateway)") and play in `<root>/websocket/`."""
    from chatstate.gateway.sim.scenarios import WEBSOCKET_SCENARIOS

    rows: list[Row] = []
    for transport in TRANSPORTS[opts.transport]:
        if transport == "http":
            rows += await Play(opts, say, hits).rows(root)
            continue
        chosen = tuple(a for a in opts.only if a in WEBSOCKET_SCENARIOS)
        if chosen:
            say(f"\n#### transport: Slack Socket Mode / Discord Gateway ({', '.join(chosen)})")
            (root / "websocket").mkdir(mode=0o700, exist_ok=True)
            os.chmod(root / "websocket", 0o700)
            rows += await Play(replace(opts, only=chosen), say, hits, websocket=True).rows(root / "websocket")
    return rows


@dataclass(frozen=True)
class Play:
    """One transport's play of the chosen scenarios, with the legacy maps and then the store."""

    opts: Options  # only, kill, hostile
    say: Any
    hits: dict[str, dict[str, int]]  # filled in: adapter -> edge behaviour -> times played
    websocket: bool = False  # Slack Socket Mode and the Discord Gateway instead of HTTP

    async def rows(self, root: Path) -> list[Row]:
        results = {mode: await self._mode(mode, root / mode) for mode in ("legacy", "store")}
        rows = []
        for (adapter, behaviour), (legacy_ok, legacy_detail, legacy_s) in results["legacy"].items():
            store_ok, store_detail, store_s = results["store"].get((adapter, behaviour), (False, "not run", 0.0))
            rows.append(Row(adapter, behaviour, legacy_ok, store_ok, legacy_detail, store_detail, legacy_s + store_s))
        return rows

    async def _mode(self, mode: Mode, state_dir: Path) -> dict[tuple[str, str], tuple[bool, str, float]]:
        from chatstate.gateway.sim.harness import GatewayHarness
        from chatstate.gateway.sim.scenarios import SCENARIOS, TRANSPORT_LABELS, WEBSOCKET_SCENARIOS

        scenarios = [(WEBSOCKET_SCENARIOS if self.websocket else SCENARIOS)[a] for a in self.opts.only]
        sims = [(s.make_hostile or s.make_simulator)() if self.opts.hostile else s.make_simulator() for s in scenarios]
        label = "legacy in-memory maps" if mode == "legacy" else "keyed store (SQLite)"
        self.say(f"\n== {label} ==")
        t0 = time.monotonic()
        state_dir.mkdir(mode=0o700)
        os.chmod(state_dir, 0o700)  # whatever the umask: its config holds the simulators' tokens
        async with GatewayHarness(
            sims,
            modes=mode,
            state_dir=state_dir,
            adapters={s.adapter: s.adapter_config for s in scenarios if s.adapter_config},
        ) as gw:
            self.say(f"  gateway ready on {gw.gateway_url} (pid {gw.pid}) in {time.monotonic() - t0:.1f} s")
            timings: dict[str, float] = {}
            contexts = []
            for scenario, sim in zip(scenarios, sims):
                t = time.monotonic()
                contexts.append(await scenario.first_half(sim))
                timings[scenario.adapter] = time.monotonic() - t
                self.say(f"  {scenario.adapter:<8} first half done")
            t = time.monotonic()
            code = await (gw.stop() if self.opts.kill == "term" else gw.kill())
            for i, scenario in enumerate(scenarios):
                if scenario.while_down is not None:  # e.g. a Discord Gateway dispatch while down
                    contexts[i] = await scenario.while_down(sims[i], contexts[i])
            await gw.start()
            self.say(
                f"  gateway {'SIGKILLed' if self.opts.kill == 'kill' else 'stopped by SIGTERM'} (exit {code}) "
                f"and back in {time.monotonic() - t:.1f} s"
            )
            out: dict[tuple[str, str], tuple[bool, str, float]] = {}
            for scenario, sim, ctx in zip(scenarios, sims, contexts):
                t = time.monotonic()
                outcomes = await scenario.second_half(sim, ctx)
                spent = timings[scenario.adapter] + time.monotonic() - t
                for o in outcomes:
                    adapter = TRANSPORT_LABELS[o.adapter] if self.websocket else o.adapter
                    out[(adapter, o.behaviour)] = (o.survived, o.detail, spent / len(outcomes))
                    self.say(f"  {adapter:<8} {o.behaviour}: {'works' if o.survived else 'LOST'} ({o.detail})")
            for scenario, sim in zip(scenarios, sims):
                await sim.settle(timeout=30)  # redeliveries and echoes still on their way count too
                counted = self.hits.setdefault(
                    TRANSPORT_LABELS[scenario.adapter] if self.websocket else scenario.adapter, {}
                )
                for behaviour, n in sim.hits.items():
                    counted[behaviour] = counted.get(behaviour, 0) + n
        return out


TIME_NOTE = (
    "time: wall-clock time spent playing that conversation (its first half before the "
    "restart plus its second half after it), the legacy and the keyed-store runs added; an "
    "adapter with two rows shares its time between them; the restart itself is not counted."
)


def render_table(rows: list[Row]) -> str:
    """The result table; `time` is explained by TIME_NOTE, printed under it."""
    head = ("adapter", "behaviour", "legacy after restart", "keyed store after restart", "time")
    lost = {False: "lost (expected)", True: "kept (UNEXPECTED)"}
    kept = {True: "works", False: "LOST (FAIL)"}
    body = [
        (r.adapter, r.behaviour, lost[r.legacy_survived], kept[r.store_survived], f"{r.seconds * 1000:.0f} ms")
        for r in rows
    ]
    return _markdown(head, body)


def render_hits(hits: dict[str, dict[str, int]], only: list[str]) -> str:
    """One row per adapter (and transport) played: each edge behaviour its simulator played,
    with how often."""
    names = [*hits, *(a for a in only if a not in hits)]
    body = [
        (a, ", ".join(f"{k} {v}" for k, v in sorted(hits.get(a, {}).items())) or "none (no switches for it)")
        for a in names
    ]
    return _markdown(("adapter", "edge behaviours hit (count)"), body)


def _markdown(head: tuple[str, ...], body: Sequence[tuple[str, ...]]) -> str:
    """A Markdown table, each column as wide as its widest cell."""
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |" for cells in [head, *body]]
    return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])

"""`chatstate status`: is a gateway running on this state dir, and is it well — without ever
changing anything, hanging, or printing a traceback.

Running or not comes from the state dir's lock (pidfile.running_info); health from one GET
/healthz with a short timeout, so a frozen gateway reads "not responding (timeout N s)" instead
of a long wait and a bare FAILING; the store, when nothing runs, from a read-only check of the
database file ("no database yet" when there is none).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from chatstate.gateway.config import STATE_URL_ENV, GatewayConfig, check_state_url
from chatstate.gateway.exits import OK, ConfigError
from chatstate.gateway.pidfile import UNSTOPPED, check_database_file, check_state_dir, ended_unstopped, running_info

STATUS_TIMEOUT_S = 3.0  # how long `status` waits for /healthz before "not responding"


def gateway_status(config: GatewayConfig, *, timeout_s: float = STATUS_TIMEOUT_S) -> dict[str, Any]:
    """Running or not, pid, uptime, address, health and a store summary (read-only when down).

    Raises GatewayExit (exit 3) for a state dir the gateway could not use: a file, a symlink,
    another user's directory, an unwritable one.
    """
    check_state_dir(config.state_dir, create=False)
    info = running_info(config.state_dir) if config.state_dir.exists() else None
    report: dict[str, Any] = {"running": info is not None, "state_dir": str(config.state_dir)}
    if info is None:
        if last := ended_unstopped(config.state_dir):
            report["last_gateway"] = {"pid": last, "stopped": False}
        report["store"] = _offline_store_summary(config)
        return report
    report.update(pid=info.get("pid"), url=info.get("url"), ready=info.get("ready", False))
    if isinstance(info.get("started_at"), (int, float)):
        report["uptime_s"] = round(time.time() - info["started_at"], 3)
    else:  # deleted or clobbered under it: the pid is the lock holder's; uptime and address are unknown
        report["pid_file"] = "missing or unreadable"
    if info.get("url"):
        # `--timeout 0` means "do not wait": urllib would try a non-blocking connect and call a
        # healthy gateway unreachable (EINPROGRESS), so it is not asked at all
        not_asked: dict[str, Any] = {"status": "not checked (--timeout 0)"}
        health = _get_health(info["url"], timeout_s) if timeout_s > 0 else not_asked
        report["health"] = health.get("status", "unreachable")
        report["store"] = health.get("store")
        report["adapters"] = {k: v.get("status") for k, v in (health.get("adapters") or {}).items()}
        if "error" in health:
            report["error"] = health["error"]
    return report


def check_startable(config: GatewayConfig) -> int:
    """`start --check-only` (and so `restart`, before it stops anything): what a start checks before
    it touches anything, in its order and with its exit codes: the state dir, every enabled plugin
    (2), and the database file, read-only (3: not SQLite, corrupt, a newer schema); 0 = it would start."""
    from chatstate import state
    from chatstate.gateway.registry import load_plugins

    check_state_dir(config.state_dir, create=False)
    load_plugins(config)
    check_database_file(None if config.state_url else state.database_path(config.state_dir))
    return OK


def _get_health(url: str, timeout_s: float) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while starting/stopping still has a body
        try:
            return json.loads(exc.read())
        except ValueError:
            return {"status": f"http {exc.code}"}
    except TimeoutError:
        return {"status": f"not responding (timeout {timeout_s:g} s)"}
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return {"status": f"not responding (timeout {timeout_s:g} s)"}
        return {"status": "unreachable", "error": str(exc.reason)}
    except (OSError, ValueError) as exc:
        return {"status": "unreachable", "error": str(exc)}


def _offline_store_summary(config: GatewayConfig) -> dict[str, Any]:
    """Check the database read-only (no probe row is written while the gateway is down)."""
    from chatstate import state
    from chatstate.state._files import to_go_on

    if config.state_url:  # the Database's location: the URL with its password shown as ***
        shown = state.Database(url=config.state_url).location
        try:  # offline, as `start` checks it: a URL it would refuse is said now, not at the next start
            check_state_url(config)
        except ConfigError as exc:
            fix = f"${STATE_URL_ENV}" if STATE_URL_ENV in config.env else f"[state] url in {config.source}"
            fix = f"fix {fix}: `chatstate start` refuses it as it is"
            return {"ok": False, "url": shown, "code": "INVALID_INPUT", "message": exc.why, "next": fix}
        return {"ok": None, "url": shown, "note": "not checked while the gateway is down"}

    path = state.database_path(config.state_dir)
    if not path.exists():
        return {"ok": None, "database_path": str(path), "exists": False, "note": "no database yet"}
    try:
        state.check_database(path)
    except state.StateStoreError as exc:
        refused = {"ok": False, "database_path": str(path), "code": str(exc.code), "message": str(exc)}
        if steps := to_go_on(path, exc).removeprefix(". To go on: "):  # none when its owner or place is the fault
            refused["next"] = steps
        return refused
    return {"ok": True, "database_path": str(path), "exists": True}


def status_text(r: dict[str, Any]) -> str:
    """The human form of `gateway_status`'s report."""
    store = r.get("store") or {}
    if not r["running"]:
        if store.get("ok") is None:
            what = store.get("note", "not checked")
            where = store.get("database_path") or store.get("url", "")
            line = f"store: {what} ({where})" if where else f"store: {what}"
            line += "; `chatstate state probe` checks it" if "url" in store else ""
        elif store["ok"]:
            line = f"store: ok {store.get('database_path', '')}"
        else:
            line = f"store: UNUSABLE ({store.get('code')}) {store.get('message')}"
            line += f"; {store['next']}" if "next" in store else ""
        last = f"; the last gateway (pid {r['last_gateway']['pid']}) {UNSTOPPED}" if "last_gateway" in r else ""
        return f"gateway: not running (state dir {r['state_dir']}){last}\n{line}"
    lines = [f"gateway: running pid {r.get('pid')} up {r.get('uptime_s', 0):.1f}s at {r.get('url') or '(starting)'}"]
    if "pid_file" in r:
        lines[0] = f"gateway: running pid {r.get('pid')}; its pid file is {r['pid_file']}, so its address is unknown "
        lines[0] += "(`chatstate stop` and `restart` still find it)"
    if "health" in r:
        health = r["health"]
        lines.append(f"health: {health}" + (f" ({r['error']})" if r.get("error") else ""))
        if health.startswith("not responding"):
            lines.append(
                "  the process holds the state dir but does not answer GET /healthz: "
                "see its log, or `chatstate stop` (SIGKILL after --timeout)"
            )
        elif store:
            failed = "; ".join(
                f"{s.get('name')}: {s.get('message') or s.get('code')}" for s in store.get("failed") or []
            )
            lines.append(
                f"store: ok {store.get('database_path', '')}"
                if store.get("ok")
                else f"store: FAILING {store.get('database_path', '')} ({failed or 'probe failed'})"
            )
        lines += [f"adapter {k}: {v}" for k, v in (r.get("adapters") or {}).items()]
    return "\n".join(lines)

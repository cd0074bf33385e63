"""`python -m chatstate.state probe|inspect`: look at a state database without writing to plugin rows.

Exit codes: 0 ok, 1 the probe failed or the database is unusable, 2 bad usage."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._database import probe
from ._files import check_database, database_path, path_text, read_only, resolve_path, to_go_on
from ._spec import StateStoreError, wall_clock_ms

WHERE = "(:plugin IS NULL OR plugin_id = :plugin) AND (:ns IS NULL OR namespace = :ns)"
# "IS NOT NULL AND": `expires_at <= :now` alone is NULL for a never-expiring row; a sum of NULLs is NULL, not 0.
NAMESPACES = f"""SELECT plugin_id, namespace, sum(expires_at IS NULL OR expires_at > :now),
sum(expires_at IS NOT NULL AND expires_at <= :now) FROM entries WHERE {WHERE} GROUP BY plugin_id, namespace ORDER BY 1, 2"""
FOREIGN = ". Is that the state database? It lives at <state dir>/plugin-state/state.sqlite: give --state-dir D"
LIVE_KEYS = f"""SELECT plugin_id, key, value, created_at, expires_at FROM entries WHERE {WHERE}
AND (expires_at IS NULL OR expires_at > :now) ORDER BY created_at, key"""
NEW_HINT = "give --state-dir D or --path FILE"
URL_TEXT = functools.partial(path_text, why="an empty --url would probe the SQLite file instead")  # `--url "$UNSET"`


def build_parser(prog: str = "python -m chatstate.state") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Inspect chatstate's keyed-store database.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="check state dir, open, schema, a write-read-delete and a checkpoint (JSON)")
    i = sub.add_parser("inspect", help="list namespaces with live/expired counts and keys with created/expires")
    where = {each: each.add_mutually_exclusive_group() for each in (p, i)}  # one place to look, never a silent pick
    for group in where.values():
        group.add_argument("--state-dir", type=path_text, help="state dir (default $CHATSTATE_HOME or ~/.chatstate)")
        group.add_argument("--path", type=path_text, help="the database file itself, instead of --state-dir")
    where[p].add_argument("--url", type=URL_TEXT, help="probe a redis:// backend instead of the SQLite file")
    i.add_argument("--plugin", help="only this plugin id")
    i.add_argument("--namespace", help="only this namespace (lists its keys)")
    i.add_argument("--values", action="store_true", help="also print stored values (off by default)")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m chatstate.state") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        path = resolve_path(args.path) if args.path else database_path(args.state_dir)
    except RuntimeError:  # pathlib cannot expand `~user` for a user this host does not have
        print(
            f"{args.path or args.state_dir or '$CHATSTATE_HOME'}: no such user's home; give the whole path",
            file=sys.stderr,
        )
        return 2
    try:
        if args.command == "probe":
            new = not args.url and not path.exists()  # made, as a first start would; said, so a typo shows
            result = probe(url=args.url) if args.url else probe(path)
            print(json.dumps(result, indent=2), flush=True)
            if new and path.exists():
                print(f"probe: there was no database; made an empty {path} (expected one? {NEW_HINT})", file=sys.stderr)
            return 0 if result["ok"] else 1
        return _inspect(args, path)
    except BrokenPipeError:  # `... | head`: the reader has what it wanted; no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _iso(ms: int | None) -> str | None:
    return None if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _inspect(args: argparse.Namespace, path: Path) -> int:
    try:
        check_database(path)  # read-only: a damaged file is reported, never touched
    except StateStoreError as exc:
        # Moving a file aside starts an empty store only for the store's own file; any other is someone's file.
        own = path.parent.name == "plugin-state"
        hint = to_go_on(path, exc) if own else FOREIGN if exc.code == "OPEN_FAILED" else ""
        print(f"{exc}{hint}", file=sys.stderr)
        return 1
    if not path.exists():
        where = "pass the right one with --state-dir D or --path FILE, or start a gateway on it first"
        print(f"no state database at {path}: nothing was stored there yet; {where}", file=sys.stderr)
        return 1
    params = {"now": wall_clock_ms(), "plugin": args.plugin or None, "ns": args.namespace or None}
    columns, keys = ("plugin_id", "namespace", "live", "expired"), list[dict[str, Any]]()
    try:
        with contextlib.closing(read_only(path)) as conn:
            namespaces = [dict(zip(columns, row)) for row in conn.execute(NAMESPACES, params)]
            for p, k, v, created, expires in conn.execute(LIVE_KEYS, params) if args.namespace else ():
                keys.append({"plugin_id": p, "key": k, "created_at": _iso(created), "expires_at": _iso(expires)})
                if args.values:
                    keys[-1]["value"] = json.loads(v)
    except sqlite3.Error as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 1
    except ValueError:  # json.loads: say which key, never echo the unreadable text
        print(f"CORRUPT: the stored JSON of key {k!r} is unreadable [{path}]", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"database_path": str(path), "namespaces": namespaces, "keys": keys}, indent=2))
        return 0
    print(f"database: {path}")
    for row in [("plugin", "namespace", "live", "expired"), *(ns.values() for ns in namespaces)]:
        print("{:<24} {:<36} {:>8} {:>8}".format(*row))
    for k in keys:
        extra = f"  value={json.dumps(k['value'])}" if args.values else ""
        print(f"  {k['key']}  created={k['created_at']}  expires={k['expires_at'] or 'never'}{extra}")
    return 0


if __name__ == "__main__":  # imported, it only defines: the gateway runs `main` with its own prog
    sys.exit(main())

"""One set of settings per (database, plugin, namespace) in this process: reopening a pair with
other settings is refused (docs/state.md, "Opening"). Counted per open store, so the pair is
forgotten when its last store closes; keyed by pid too, so a forked child starts empty."""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_opened: dict[tuple[int, str, str, str], tuple[tuple[object, ...], int]] = {}


def hold(location: str, plugin_id: str, namespace: str, wanted: tuple[object, ...]) -> tuple[object, ...] | None:
    """Record one more open store of the pair with `wanted`; return the other settings it is
    already open with instead (recording nothing), or None."""
    ident = (os.getpid(), location, plugin_id, namespace)
    with _lock:
        held = _opened.get(ident)
        if held is not None and held[0] != wanted:
            return held[0]
        _opened[ident] = (wanted, (held[1] if held else 0) + 1)
        return None


def drop(location: str, plugin_id: str, namespace: str) -> None:
    """One store of the pair closed."""
    ident = (os.getpid(), location, plugin_id, namespace)
    with _lock:
        held = _opened.get(ident)
        if held is not None:
            if held[1] <= 1:
                del _opened[ident]
            else:
                _opened[ident] = (held[0], held[1] - 1)

"""Read the gateway's TOML config, apply environment and command-line overrides, and check it.

Every problem raises `ConfigError` naming the dotted key and why, so `chatstate start` can exit 2
with a message a person can act on. Adapter tables (`[adapters.<id>]`) are checked only for the
keys the gateway itself reads (`enabled`, `mode`); the rest belongs to the adapter.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from chatstate.gateway.exits import ConfigError

# Defaults, one unit a line (docs/gateway.md lists every key).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_DRAIN_TIMEOUT_S = 10.0  # how long SIGTERM waits for in-flight requests
DEFAULT_SWEEP_INTERVAL_S = 60.0  # DESIGN.md §2: the gateway sweeps expired rows every 60 s
DEFAULT_PLUGIN_MAX_LIVE_ROWS = 50_000  # deprecated: no effect since state v2 (docs/state.md rule 10), still accepted
DEFAULT_STATE_DIR = "~/.chatstate"
STATE_URL_ENV = "CHATSTATE_STATE_URL"  # overrides [state] url (the Redis URL)
ENV_PREFIX = "CHATSTATE_"  # CHATSTATE_<ADAPTER>_<KEY> overrides [adapters.<adapter>] <key>
LOG_LEVELS = ("debug", "info", "warning", "error")
MODES = ("store", "legacy")

_SECTIONS: dict[str, set[str]] = {
    "gateway": {"host", "port", "drain_timeout_s", "access_log", "log_level"},
    "state": {"dir", "url", "sweep_interval_s", "plugin_max_live_rows"},
}
_TOP_LEVEL = {"gateway", "state", "adapters", "trusted_plugins", "external_plugins"}
_IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

Mode = Literal["store", "legacy"]


@dataclass(frozen=True)
class AdapterConfig:
    """One `[adapters.<id>]` table after env overrides; `table` is what the plugin sees."""

    id: str
    enabled: bool
    mode: Mode
    table: Mapping[str, Any]


@dataclass(frozen=True)
class GatewayConfig:
    """The whole, checked configuration of one gateway process."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    access_log: bool = True
    log_level: str = "info"
    state_dir: Path = field(default_factory=lambda: default_state_dir({}))
    state_url: str | None = None
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    plugin_max_live_rows: int = DEFAULT_PLUGIN_MAX_LIVE_ROWS
    trusted_plugins: tuple[str, ...] = ()
    external_plugins: tuple[str, ...] = ()
    adapters: Mapping[str, AdapterConfig] = field(default_factory=dict)
    source: Path | None = None

    def enabled_adapters(self) -> list[AdapterConfig]:
        return [a for a in self.adapters.values() if a.enabled]


def default_state_dir(env: Mapping[str, str]) -> Path:
    """`CHATSTATE_HOME` if set, else `~/.chatstate` (the same rule as the state package)."""
    return Path(env.get("CHATSTATE_HOME") or DEFAULT_STATE_DIR).expanduser()


def load_config(
    path: str | Path | None,
    *,
    env: Mapping[str, str] | None = None,
    state_dir: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
) -> GatewayConfig:
    """Read `path` (or use defaults when None), then apply env and command-line overrides.

    Command-line values (`state_dir`, `host`, `port`) win over the file; `CHATSTATE_<ADAPTER>_<KEY>`
    variables win over keys of existing `[adapters.<adapter>]` tables.
    Raises ConfigError (unreadable file, invalid TOML, unknown key, wrong type or range).
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = None
    if path is not None:
        source = Path(path)
        try:
            with source.open("rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(str(source), f"cannot read config file ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(source), f"not valid TOML ({exc})") from None
    return parse_config(raw, env=env, source=source, state_dir=state_dir, host=host, port=port)


def parse_config(
    raw: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    source: Path | None = None,
    state_dir: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
) -> GatewayConfig:
    """Check an already-parsed TOML document; see `load_config`."""
    _no_unknown(raw, _TOP_LEVEL, "")
    gw = _table(raw, "gateway")
    st = _table(raw, "state")
    for name, table in (("gateway", gw), ("state", st)):
        _no_unknown(table, _SECTIONS[name], name + ".")

    # the file's values are checked even when the command line overrides them
    file_host = _get(gw, "gateway.host", str, DEFAULT_HOST)
    file_port = _get(gw, "gateway.port", int, DEFAULT_PORT)
    host = host if host is not None else file_host
    port = port if port is not None else file_port
    if not host:
        raise ConfigError("gateway.host", "must not be empty")
    if not 0 <= port <= 65535:
        raise ConfigError("gateway.port", f"must be 0..65535, got {port}")
    drain = _number(gw, "gateway.drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S, minimum=0.0)
    log_level = _get(gw, "gateway.log_level", str, "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError("gateway.log_level", f"must be one of {', '.join(LOG_LEVELS)}")

    if state_dir is not None:
        resolved_dir = Path(state_dir).expanduser()
    elif "dir" in st:
        resolved_dir = Path(_get(st, "state.dir", str, "")).expanduser()
        if not str(resolved_dir):
            raise ConfigError("state.dir", "must not be empty")
    else:
        resolved_dir = default_state_dir(env)
    # CHATSTATE_STATE_URL wins over [state] url, so one config file serves a fleet on Redis (issue 10)
    url = env.get(STATE_URL_ENV) or _get(st, "state.url", str, "") or None
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("state.url", "must be a redis:// or rediss:// URL")
    sweep = _number(st, "state.sweep_interval_s", DEFAULT_SWEEP_INTERVAL_S, minimum=None)
    if sweep <= 0:
        raise ConfigError("state.sweep_interval_s", f"must be > 0, got {sweep}")
    ceiling = _get(st, "state.plugin_max_live_rows", int, DEFAULT_PLUGIN_MAX_LIVE_ROWS)
    if ceiling < 1:
        raise ConfigError("state.plugin_max_live_rows", f"must be >= 1, got {ceiling}")

    trusted = tuple(_str_list(raw, "trusted_plugins"))
    external = tuple(_str_list(raw, "external_plugins"))
    for i, spec in enumerate(external):
        if not _IMPORT_STRING.match(spec):
            raise ConfigError(f"external_plugins[{i}]", f"{spec!r} is not 'module:Class'")

    return GatewayConfig(
        host=host,
        port=port,
        drain_timeout_s=drain,
        access_log=_get(gw, "gateway.access_log", bool, True),
        log_level=log_level,
        state_dir=resolved_dir,
        state_url=url,
        sweep_interval_s=sweep,
        plugin_max_live_rows=ceiling,
        trusted_plugins=trusted,
        external_plugins=external,
        adapters=MappingProxyType(_adapters(raw, env)),
        source=source,
    )


def env_prefix(adapter_id: str) -> str:
    """`CHATSTATE_SLACK_` for "slack"; characters other than A-Z, 0-9 become `_`."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", adapter_id.upper()) + "_"


def _adapters(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, AdapterConfig]:
    tables = _table(raw, "adapters")
    out: dict[str, AdapterConfig] = {}
    for adapter_id, table in tables.items():
        key = f"adapters.{adapter_id}"
        if not isinstance(table, dict):
            raise ConfigError(key, "must be a table ([adapters.<id>])")
        merged = dict(table)
        prefix = env_prefix(adapter_id)
        for name, value in env.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                merged[name[len(prefix):].lower()] = value
        enabled = _get(merged, f"{key}.enabled", bool, True)
        mode = _get(merged, f"{key}.mode", str, "store")
        if mode not in MODES:
            raise ConfigError(f"{key}.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        out[adapter_id] = AdapterConfig(adapter_id, enabled, mode, MappingProxyType(merged))
    return out


def _no_unknown(table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for name in table:
        if name not in allowed:
            hint = f"; known keys: {', '.join(sorted(allowed))}"
            raise ConfigError(prefix + name, "unknown key" + hint)


def _table(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table")
    return value


def _get(table: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = table.get(key.rsplit(".", 1)[-1], default)
    # bool is an int in Python; TOML keeps them apart and so do we
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(key, f"must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _number(table: Mapping[str, Any], key: str, default: float, *, minimum: float | None) -> float:
    value = table.get(key.rsplit(".", 1)[-1], default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value}")
    return float(value)


def _str_list(raw: Mapping[str, Any], key: str) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, "must be a list of non-empty strings")
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false"}.get(kind, kind.__name__)

"""Read the gateway's TOML config, apply environment and command-line overrides, and check it.

Every problem raises `ConfigError` naming the dotted key and why, so `chatstate start` can exit 2
with a message a person can act on. The tables are `gateway.settings` models; here the
`[adapters.<id>]` tables are checked for the keys every adapter has (`enabled`, `mode`), and
`gateway.registry` validates the rest against the plugin's own settings type.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from chatstate.gateway.cpu import check_cpu
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.settings import (
    ENV_PREFIX,
    AdapterSettings,
    Mode,
    Settings,
    build,
    check_keys,
    env_prefix,
    env_var,
)
from chatstate.state import state_dir as resolve_state_dir
from chatstate.state._database import shown_url

# Defaults, one unit a line (docs/gateway.md lists every key and its environment variable).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_DRAIN_TIMEOUT_S = 10.0  # how long SIGTERM waits for in-flight requests
DEFAULT_SWEEP_INTERVAL_S = 60.0  # docs/state.md: the gateway sweeps expired rows every 60 s
DEFAULT_PLUGIN_MAX_LIVE_ROWS = 50_000  # deprecated: no effect since state v2 (docs/state.md rule 10), still accepted
STATE_URL_ENV = "CHATSTATE_STATE_URL"  # overrides [state] url (the Redis URL)
LOG_LEVELS = ("debug", "info", "warning", "error")

_IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class GatewaySettings(Settings):
    """`[gateway]`; environment: `CHATSTATE_GATEWAY_<KEY>`."""

    host: Annotated[str, Field(min_length=1)] = DEFAULT_HOST  # listen address (--host wins)
    port: Annotated[int, Field(ge=0, le=65535)] = DEFAULT_PORT  # 0 = any free port (--port wins)
    drain_timeout_s: Annotated[float, Field(ge=0)] = DEFAULT_DRAIN_TIMEOUT_S
    access_log: bool = True  # one JSON line per HTTP request
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    cpu: Annotated[int, Field(ge=0)] | None = None  # pin the process to this CPU (gateway/cpu.py)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("cpu")
    @classmethod
    def _usable_cpu(cls, value: int | None) -> int | None:
        if value is not None:
            check_cpu(value)
        return value


class StateSettings(Settings):
    """`[state]`; environment: `CHATSTATE_STATE_<KEY>` (`CHATSTATE_HOME` is the default dir)."""

    path_keys = ("dir",)
    dir: Annotated[str, Field(min_length=1)] | None = None  # default $CHATSTATE_HOME or ~/.chatstate
    url: str | None = None  # shared Redis
    sweep_interval_s: Annotated[float, Field(gt=0)] = DEFAULT_SWEEP_INTERVAL_S
    plugin_max_live_rows: Annotated[int, Field(ge=1)] = DEFAULT_PLUGIN_MAX_LIVE_ROWS

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"(redis|rediss|unix|redis\+sentinel|redis\+cluster)://", value):
            forms = "redis://, rediss:// (TLS), unix://, redis+sentinel:// or redis+cluster://"
            raise ValueError(f"must start with {forms} (docs/state.md)")  # not pydantic's regex, nor the URL
        return value


class TopLevelSettings(Settings):
    """Keys before any table; environment: `CHATSTATE_TRUSTED_PLUGINS`, `CHATSTATE_EXTERNAL_PLUGINS`."""

    trusted_plugins: tuple[Annotated[str, Field(min_length=1)], ...] = Field((), strict=False)
    external_plugins: tuple[Annotated[str, Field(min_length=1)], ...] = Field((), strict=False)


_TABLES = ("gateway", "state", "adapters")


@dataclass(frozen=True)
class AdapterConfig:
    """One `[adapters.<id>]` table: `enabled` and `mode` checked here; `table` and `env` (its
    `CHATSTATE_<ID>_*` variables) are validated against the plugin's settings type when the
    registry loads it."""

    id: str
    enabled: bool
    mode: Mode
    table: Mapping[str, Any]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayConfig:
    """The whole, checked configuration of one gateway process."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    access_log: bool = True
    log_level: str = "info"
    cpu: int | None = None
    state_dir: Path = field(default_factory=lambda: default_state_dir({}))
    state_url: str | None = None
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    plugin_max_live_rows: int = DEFAULT_PLUGIN_MAX_LIVE_ROWS
    trusted_plugins: tuple[str, ...] = ()
    external_plugins: tuple[str, ...] = ()
    adapters: Mapping[str, AdapterConfig] = field(default_factory=dict)
    source: Path | None = None  # the config file, absolute
    env: Mapping[str, str] = field(default_factory=dict)  # the CHATSTATE_* variables it was read with

    def enabled_adapters(self) -> list[AdapterConfig]:
        return [a for a in self.adapters.values() if a.enabled]


def default_state_dir(env: Mapping[str, str]) -> Path:
    """`CHATSTATE_HOME` if set in `env`, else `~/.chatstate`: the state package's resolver."""
    try:
        return resolve_state_dir(env=env)
    except RuntimeError:  # pathlib's "Could not determine home directory."
        raise _no_user(env.get("CHATSTATE_HOME") or "~", "$CHATSTATE_HOME") from None


def expanded(text: str | Path, key: str) -> Path:
    """`text` with `~` / `~user` expanded; a user this host does not know is an error naming `key`."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise _no_user(str(text), key) from None


def _no_user(text: str, key: str) -> ConfigError:
    return ConfigError(key, f"{text.split('/')[0]} (in {text}) is no user of this host; give the whole path")


def load_config(
    path: str | Path | None,
    *,
    env: Mapping[str, str] | None = None,
    state_dir: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
) -> GatewayConfig:
    """Read `path` (or use defaults when None), then apply env and command-line overrides.

    Command-line values (`state_dir`, `host`, `port`) win over environment variables, which win
    over the file. Raises ConfigError (unreadable file, invalid TOML, unknown key, wrong type
    or range).
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = None
    if path is not None:
        source = expanded(path, "--config").absolute()
        try:
            raw = tomllib.loads(source.read_bytes().decode("utf-8-sig"))  # a leading BOM (Notepad's) is no error
        except IsADirectoryError:
            raise ConfigError(str(source), "is a directory, not a TOML file") from None
        except OSError as exc:
            raise ConfigError(str(source), f"cannot read config file ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(source), f"not valid TOML ({exc})") from None
        except UnicodeDecodeError as exc:  # e.g. saved as UTF-16 by an editor; TOML is UTF-8
            raise ConfigError(
                str(source), f"not valid TOML (not UTF-8 at byte {exc.start}); save it as UTF-8"
            ) from None
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
    top = {k: v for k, v in raw.items() if k not in _TABLES}
    for name in (k for k, v in top.items() if isinstance(v, dict)):  # `[gatway]`: not a top-level key's typo
        like = "".join(f" (did you mean [{m}]?)" for m in difflib.get_close_matches(name, _TABLES, 1))
        raise ConfigError(f"[{name}]", f"unknown table{like}; the tables are [gateway], [state] and [adapters.<id>]")
    top_level = build(TopLevelSettings, top, where="", env=env, prefix=ENV_PREFIX)
    gw = build(GatewaySettings, _table(raw, "gateway"), where="gateway", env=env, prefix=env_prefix("gateway"))
    st = build(StateSettings, _table(raw, "state"), where="state", env=env, prefix=env_prefix("state"))
    for i, spec in enumerate(top_level.external_plugins):
        if not _IMPORT_STRING.match(spec):
            raise ConfigError(f"external_plugins[{i}]", f"{spec!r} is not 'module:Class'")
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError("--port", f"must be 0..65535, got {port}")
    if state_dir is not None:
        resolved_dir = expanded(state_dir, "--state-dir")
    elif st.dir is not None:  # a relative one in the file is the file's folder's, wherever a command runs from
        resolved_dir = expanded(st.dir, "state.dir")
        if source is not None and env_var(env_prefix("state"), "dir") not in env:
            resolved_dir = source.parent / resolved_dir
    else:
        resolved_dir = default_state_dir(env)
    return GatewayConfig(
        host=host if host is not None else gw.host,
        port=port if port is not None else gw.port,
        drain_timeout_s=gw.drain_timeout_s,
        access_log=gw.access_log,
        log_level=gw.log_level,
        cpu=gw.cpu,
        state_dir=resolved_dir.absolute(),
        state_url=st.url,
        sweep_interval_s=st.sweep_interval_s,
        plugin_max_live_rows=st.plugin_max_live_rows,
        trusted_plugins=top_level.trusted_plugins,
        external_plugins=top_level.external_plugins,
        adapters=MappingProxyType(_adapters(raw, env)),
        source=source,
        env=MappingProxyType({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}),
    )


def check_state_url(config: GatewayConfig) -> None:
    """Refuse a `[state] url` whose options the store would refuse when it opens it: the state
    package's own check, offline, so `start --check-only` and `restart` judge it before anything
    is stopped or started. Raises ConfigError naming the option and the accepted ones."""
    if config.state_url is None:
        return
    from chatstate.state import StateStoreError
    from chatstate.state._redis import check_url  # imports redis-py: only when a URL is set

    try:
        check_url(config.state_url, shown_url(config.state_url))
    except StateStoreError as exc:
        where = f" (from ${STATE_URL_ENV})" if STATE_URL_ENV in config.env else ""
        raise ConfigError("state.url", f"{exc}{where}") from None


def _adapters(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, AdapterConfig]:
    tables = _table(raw, "adapters")
    out: dict[str, AdapterConfig] = {}
    for adapter_id, table in tables.items():
        key = f"adapters.{adapter_id}"
        if not isinstance(table, dict):
            raise ConfigError(key, "must be a table ([adapters.<id>])")
        prefix = env_prefix(adapter_id)
        own_env = {k: v for k, v in env.items() if k.startswith(prefix)}
        base = {k: v for k, v in table.items() if k in AdapterSettings.model_fields}
        common = build(AdapterSettings, base, where=key, env=own_env, prefix=prefix)
        out[adapter_id] = AdapterConfig(
            adapter_id, common.enabled, common.mode, MappingProxyType(dict(table)), MappingProxyType(own_env)
        )
    return out


def _table(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table")
    return value


__all__ = [
    "AdapterConfig",
    "GatewayConfig",
    "GatewaySettings",
    "StateSettings",
    "check_state_url",
    "TopLevelSettings",
    "check_keys",
    "env_prefix",
    "load_config",
    "parse_config",
]

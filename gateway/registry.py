"""Which plugins this gateway runs, and where each came from (bundled or external).

Bundled plugins are listed here as lazy import strings so a gateway imports only the adapters
it enables (an adapter's SDK is heavy, and a broken optional one must not stop the others).
External plugins come from `external_plugins = ["module:Class", ...]` in the config.

The origin is decided here, by where a plugin was listed, never by the class's own `origin`
attribute: an external class that claims `origin = "bundled"` must not pass the store gate.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from chatstate.gateway import reply
from chatstate.gateway.config import AdapterConfig, GatewayConfig, GatewaySettings, StateSettings, TopLevelSettings
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.plugin import Origin, Plugin
from chatstate.gateway.settings import ENV_PREFIX, AdapterSettings, build, check_keys, describe, env_prefix

# The bundled plugins, one line each (docs/migrating-an-adapter.md: what else a new one needs).
BUNDLED: Mapping[str, str] = MappingProxyType(
    {
        "echo": "chatstate.gateway.echo:EchoPlugin",
        "slack": "chatstate.adapters.slack.plugin:SlackPlugin",
        "discord": "chatstate.adapters.discord.plugin:DiscordPlugin",
        "teams": "chatstate.adapters.teams.plugin:TeamsPlugin",
        "matrix": "chatstate.adapters.matrix.plugin:MatrixPlugin",
    }
)


def _settings_path(plugin_path: str) -> str:
    """Where a bundled plugin's settings type lives, by convention: `<Name>Settings` in the
    `config.py` beside an adapter's `plugin.py` (the core's echo keeps both in one module)."""
    module, cls = plugin_path.split(":")
    name = cls.removesuffix("Plugin") + "Settings"
    package, _, leaf = module.rpartition(".")
    return f"{package}.config:{name}" if leaf == "plugin" else f"{module}:{name}"


# Each bundled adapter's settings type, importable without its SDK: a disabled adapter's table
# is still checked for unknown keys (a typo fails even before the adapter is switched on).
# Derived from BUNDLED, so a new bundled adapter is one line there.
BUNDLED_SETTINGS: Mapping[str, str] = MappingProxyType({k: _settings_path(v) for k, v in BUNDLED.items()})
CORE_PREFIX = "core:"  # plugin ids starting with this are reserved for the core's own stores


@dataclass(frozen=True)
class LoadedPlugin:
    """One plugin instance to run, with the origin the gateway assigned and its config."""

    plugin: Plugin
    origin: Origin
    adapter: AdapterConfig
    settings: AdapterSettings = AdapterSettings()
    reply_hook: reply.Hook | None = None  # the user's reply hook for this adapter (gateway/reply.py)

    @property
    def id(self) -> str:
        return self.plugin.id


def import_object(spec: str, *, key: str) -> Any:
    """Import `module:attr`; raises ConfigError naming `key` when it cannot (a module that is
    not found: where it was looked for, and how to make it findable)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise ConfigError(key, f"cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
        raise ConfigError(key, _not_found(module_name, exc.name)) from None
    except Exception as exc:  # an import can fail any way a module's top level can
        raise ConfigError(key, f"cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(key, f"module {module_name!r} has no attribute {attr!r}") from None


def _not_found(module_name: str, missing: str) -> str:
    """Why `missing` (the module or a parent package of it) was not found, and the fix."""
    top = missing.split(".")[0]
    pythonpath = os.environ.get("PYTHONPATH")
    return (
        f"cannot import {module_name!r}: no module {missing!r} in the folder this command ran in "
        f"({os.getcwd()}), on PYTHONPATH ({pythonpath or 'unset'}) or among the installed packages; "
        f"run it from the folder that holds {top}/ or {top}.py, or add that folder to PYTHONPATH"
    )


def load_reply_hook(settings: AdapterSettings, *, key: str) -> reply.Hook | None:
    """The `reply = "module:function"` hook of one adapter's settings, imported; None if unset.
    Raises ConfigError naming `<key>.reply`."""
    if settings.reply is None:
        return None
    function = import_object(settings.reply, key=f"{key}.reply")
    if not callable(function):
        raise ConfigError(f"{key}.reply", f"{settings.reply!r} is a {type(function).__name__}, not a function")
    return reply.Hook(function, settings.reply, settings.reply_timeout_s)


def load_plugins(config: GatewayConfig) -> list[LoadedPlugin]:
    """Import and instantiate every enabled plugin, bundled first, then external in list order.

    Each plugin's table (with its CHATSTATE_<ID>_<KEY> variables) is validated against its
    `settings_type`, then `plugin.check(settings)` runs its offline checks. Raises ConfigError
    for an import failure, a class that is not a Plugin, a reserved (`core:`) or duplicate id,
    an `[adapters.<id>]` table no plugin claims, or a table its plugin refuses.
    """
    external: dict[str, type[Plugin]] = {}
    for i, spec in enumerate(config.external_plugins):
        key = f"external_plugins[{i}]"
        cls = _plugin_class(import_object(spec, key=key), key=key, spec=spec)
        if cls.id in BUNDLED:
            raise ConfigError(key, f"plugin id {cls.id!r} is taken by a bundled plugin")
        if cls.id in external:
            raise ConfigError(key, f"plugin id {cls.id!r} is listed twice")
        external[cls.id] = cls

    for adapter_id in config.adapters:
        if adapter_id not in BUNDLED and adapter_id not in external:
            known = ", ".join([*BUNDLED, *external])
            raise ConfigError(f"adapters.{adapter_id}", f"no bundled or external plugin has this id (known: {known})")

    loaded: list[LoadedPlugin] = []
    for plugin_id, spec in BUNDLED.items():
        adapter = config.adapters.get(plugin_id)
        if adapter is None:
            continue  # bundled adapters run only when their table says so
        key = f"adapters.{plugin_id}"
        if not adapter.enabled:
            settings_type = import_object(BUNDLED_SETTINGS[plugin_id], key=key)
            check_keys(settings_type, adapter.table, where=key)
            continue
        cls = _plugin_class(import_object(spec, key=key), key=key, spec=spec)
        loaded.append(_checked(_instantiate(cls, key), "bundled", adapter))
    for i, (plugin_id, cls) in enumerate(external.items()):
        adapter = config.adapters.get(plugin_id) or _tableless(plugin_id, config)
        if adapter.enabled:  # listed external plugins run unless their table disables them
            loaded.append(_checked(_instantiate(cls, f"external_plugins[{i}]"), "external", adapter))
        else:
            check_keys(cls.settings_type, adapter.table, where=f"adapters.{plugin_id}")
    return loaded


def _tableless(plugin_id: str, config: GatewayConfig) -> AdapterConfig:
    """The config of a listed external plugin without a table. Raises ConfigError when
    variables are set for it: they fill in a table's keys, so without the table they are lost."""
    prefix = env_prefix(plugin_id)
    stray = sorted(name for name in config.env if name.startswith(prefix))
    if stray:
        where = f" to {config.source}" if config.source else " to the config file"
        raise ConfigError(
            f"adapters.{plugin_id}",
            f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} set, but variables only fill in a table "
            f"that is in the config, and there is no [adapters.{plugin_id}] table; add that line{where}",
        )
    return AdapterConfig(plugin_id, True, "store", MappingProxyType({}))


# CHATSTATE_* variables read outside the tables: the default state dir and config file, and the
# test suite's own (so a developer's shell is not warned about at every start)
OTHER_VARIABLES = (
    "CHATSTATE_HOME",
    "CHATSTATE_GATEWAY_CONFIG",
    "CHATSTATE_CACHE",
    "CHATSTATE_SYNAPSE_PYTHON",
    "CHATSTATE_TEST_REDIS_URL",
    "CHATSTATE_SOAK_RESTARTS",
)


def variable_warnings(config: GatewayConfig) -> list[str]:
    """A line for each CHATSTATE_* variable in `config.env` that changes nothing: no setting
    has that name (with the closest one that does), or its adapter has no table in the file."""
    known: dict[str, str] = dict.fromkeys(OTHER_VARIABLES, "")  # variable -> its adapter id, if any
    tables = (
        (TopLevelSettings, ENV_PREFIX),
        (GatewaySettings, env_prefix("gateway")),
        (StateSettings, env_prefix("state")),
    )
    for cls, prefix in tables:
        known.update({var: "" for _key, var, _type in describe(cls, prefix=prefix)})
    if all(name in known for name in config.env):
        return []  # nothing to look up in the adapters: importing their settings costs ~0.15 s a start
    settings_types: dict[str, Any] = dict(BUNDLED_SETTINGS)  # adapter id -> its settings type (or import path)
    for spec in config.external_plugins:
        try:
            cls = import_object(spec, key="")
            settings_types[cls.id] = cls.settings_type
        except (ConfigError, AttributeError):
            continue  # load_plugins says what is wrong with it
    for adapter_id, settings_type in settings_types.items():
        if isinstance(settings_type, str):
            try:
                settings_type = import_object(settings_type, key=adapter_id)
            except ConfigError:
                continue
        known.update({var: adapter_id for _k, var, _t in describe(settings_type, prefix=env_prefix(adapter_id))})
    lines = []
    for name in sorted(config.env):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            lines.append(f"{name} is not a chatstate variable and changes nothing{hint}")
        elif known[name] and known[name] in BUNDLED and known[name] not in config.adapters:
            lines.append(
                f"{name} changes nothing: the config has no [adapters.{known[name]}] table, "
                "and a bundled adapter runs only when its table is there"
            )
    return lines


def validate_settings(plugin: Plugin, adapter: AdapterConfig) -> AdapterSettings:
    """The plugin's settings from its table and variables, after its own offline `check`.

    Raises ConfigError naming the key (never its value).
    """
    key = f"adapters.{adapter.id}"
    settings_type = plugin.settings_type
    if not (isinstance(settings_type, type) and issubclass(settings_type, AdapterSettings)):
        raise ConfigError(
            key, f"{type(plugin).__name__}.settings_type is not a gateway.settings.AdapterSettings subclass"
        )
    settings = build(settings_type, adapter.table, where=key, env=adapter.env, prefix=env_prefix(adapter.id))
    try:
        plugin.check(settings)
    except ConfigError:
        raise
    except (ValueError, LookupError, TypeError) as exc:
        named = re.match(rf"^({re.escape(key)}(?:\.\w+)?): (.*)$", str(exc), re.S)
        raise (ConfigError(named[1], named[2]) if named else ConfigError(key, str(exc))) from None
    return settings


def _checked(plugin: Plugin, origin: Origin, adapter: AdapterConfig) -> LoadedPlugin:
    settings = validate_settings(plugin, adapter)
    return LoadedPlugin(plugin, origin, adapter, settings, load_reply_hook(settings, key=f"adapters.{adapter.id}"))


def _plugin_class(obj: Any, *, key: str, spec: str) -> type[Plugin]:
    if not (isinstance(obj, type) and issubclass(obj, Plugin)):
        raise ConfigError(key, f"{spec!r} is not a gateway.plugin.Plugin subclass")
    plugin_id = getattr(obj, "id", None)
    if not isinstance(plugin_id, str) or not plugin_id.strip():
        raise ConfigError(key, f"{spec!r} has no string `id`")
    if plugin_id.startswith(CORE_PREFIX):
        raise ConfigError(key, f"plugin id {plugin_id!r}: ids starting with {CORE_PREFIX!r} are reserved for the core")
    return obj


def _instantiate(cls: type[Plugin], key: str) -> Plugin:
    try:
        return cls()
    except Exception as exc:
        raise ConfigError(key, f"cannot create {cls.__name__}() ({type(exc).__name__}: {exc})") from None

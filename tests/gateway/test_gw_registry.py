"""The plugin registry and the bundled gate, in process (no subprocess needed)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from gw_helpers import EXT_PLUGINS_DIR

from chatstate import state
from chatstate.gateway import sdk
from chatstate.gateway.config import AdapterConfig, parse_config
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.registry import BUNDLED, LoadedPlugin, load_plugins, variable_warnings
from chatstate.gateway.runtime import GatewayRuntime, PluginNotTrusted, StoreBroker
from chatstate.gateway.settings import AdapterSettings


@pytest.fixture(autouse=True)
def _ext_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXT_PLUGINS_DIR))


def test_bundled_ids_are_fixed() -> None:
    assert dict(BUNDLED) == {
        "echo": "chatstate.gateway.echo:EchoPlugin",
        "slack": "chatstate.adapters.slack.plugin:SlackPlugin",
        "discord": "chatstate.adapters.discord.plugin:DiscordPlugin",
        "teams": "chatstate.adapters.teams.plugin:TeamsPlugin",
        "matrix": "chatstate.adapters.matrix.plugin:MatrixPlugin",
    }


def test_only_enabled_bundled_plugins_are_imported() -> None:
    """A disabled adapter's table is checked against its settings type (its `config` module, so
    its package is imported), but the adapter itself, and with it its SDK, is not."""
    for name in ("chatstate.adapters.slack", "chatstate.adapters.slack.config", "chatstate.adapters.slack.plugin"):
        sys.modules.pop(name, None)
    config = parse_config({"adapters": {"echo": {"secret": "s"}, "slack": {"enabled": False}}}, env={})
    loaded = load_plugins(config)
    assert [(lp.id, lp.origin) for lp in loaded] == [("echo", "bundled")]
    assert "chatstate.adapters.slack.config" in sys.modules
    assert "chatstate.adapters.slack.plugin" not in sys.modules


def test_without_adapter_variables_no_adapter_settings_are_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every start checks the CHATSTATE_* variables; with none naming an adapter setting it must
    not import the adapters' settings modules (Discord's pulls in discord.py, ~0.15 s a start)."""
    for adapter_id in ("slack", "discord", "teams", "matrix"):  # put back after the test
        monkeypatch.delitem(sys.modules, f"chatstate.adapters.{adapter_id}.config", raising=False)
    env = {"CHATSTATE_HOME": "/x", "CHATSTATE_GATEWAY_PORT": "9"}
    config = parse_config({"adapters": {"echo": {"secret": "s"}}}, env=env)
    assert variable_warnings(config) == []
    assert not [m for m in sys.modules if m.startswith("chatstate.adapters.") and m.endswith(".config")]


def test_origin_comes_from_where_the_plugin_was_listed() -> None:
    config = parse_config({"external_plugins": ["gw_ext_plugin:NotesPlugin"]}, env={})
    [lp] = load_plugins(config)
    assert (lp.id, lp.origin) == ("ext-notes", "external")  # the class claims "bundled"


@pytest.mark.parametrize(
    ("raw", "key", "why"),
    [
        ({"external_plugins": ["no_such_module_x:P"]}, "external_plugins[0]", "cannot import"),
        ({"external_plugins": ["gw_ext_plugin:Missing"]}, "external_plugins[0]", "no attribute"),
        (
            {"external_plugins": ["chatstate.gateway.config:GatewayConfig"]},
            "external_plugins[0]",
            "not a gateway.plugin.Plugin",
        ),
        (
            {"external_plugins": ["gw_ext_plugin:NotesPlugin", "gw_ext_plugin:NotesPlugin"]},
            "external_plugins[1]",
            "twice",
        ),
        ({"adapters": {"nope": {}}}, "adapters.nope", "no bundled or external plugin"),
    ],
)
def test_registry_errors_name_the_key(raw: dict, key: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        load_plugins(parse_config(raw, env={}))
    assert info.value.key == key


def test_core_ids_are_reserved(monkeypatch: pytest.MonkeyPatch) -> None:
    import gw_ext_plugin

    monkeypatch.setattr(gw_ext_plugin.NotesPlugin, "id", "core:notes")
    with pytest.raises(ConfigError, match="reserved"):
        load_plugins(parse_config({"external_plugins": ["gw_ext_plugin:NotesPlugin"]}, env={}))


def _runtime(plugin_id: str, origin: str, broker: StoreBroker, *, trusted: bool = False) -> GatewayRuntime:
    from gw_ext_plugin import NotesPlugin

    adapter = AdapterConfig(plugin_id, True, "store", MappingProxyType({"k": "v"}))
    return GatewayRuntime(LoadedPlugin(NotesPlugin(), origin, adapter), broker=broker, trusted=trusted)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[StoreBroker]:
    with state.Database(tmp_path / "state.sqlite", settings=state.StoreSettings()) as database:
        yield StoreBroker(database)


async def test_external_plugin_is_denied_unless_trusted(broker: StoreBroker) -> None:
    denied = _runtime("ext-notes", "external", broker)
    with pytest.raises(state.StateStoreError) as info:
        await denied.open_keyed_store("ext.notes", max_entries=10)
    assert isinstance(info.value, PluginNotTrusted)
    assert info.value.code == "INVALID_INPUT" and "trusted_plugins" in str(info.value)

    allowed = _runtime("ext-notes", "external", broker, trusted=True)
    store = await allowed.open_keyed_store("ext.notes", max_entries=10)
    await store.register("k", {"v": 1})
    assert (store.plugin_id, await store.lookup("k")) == ("ext-notes", {"v": 1})
    await broker.close_all()


async def test_core_stores_are_for_bundled_plugins_only(broker: StoreBroker) -> None:
    bundled = _runtime("echo", "bundled", broker)
    store = await bundled.open_core_store("core:approvals", "pending", max_entries=10)
    assert store.plugin_id == "core:approvals"
    for core_id in ("approvals", "core:"):
        with pytest.raises(state.StateStoreError, match="core:"):
            await bundled.open_core_store(core_id, "pending", max_entries=10)
    trusted_external = _runtime("ext-notes", "external", broker, trusted=True)
    with pytest.raises(state.StateStoreError, match="only bundled"):
        await trusted_external.open_core_store("core:approvals", "pending", max_entries=10)
    await broker.close_all()


def test_runtime_shape(broker: StoreBroker) -> None:
    rt = _runtime("echo", "bundled", broker)
    common = {"enabled": True, "mode": "store", "reply": None, "reply_timeout_s": 10.0}
    assert (rt.plugin_id, rt.legacy, dict(rt.config)) == ("ext-notes", False, common)
    assert type(rt.settings) is AdapterSettings  # NotesPlugin declares no settings type of its own
    assert not hasattr(rt, "__dict__")  # slots: one small object per plugin, made once


def test_a_plugin_with_a_webhook_and_no_handle_is_refused_at_start_with_the_fix() -> None:
    class NoHandle(sdk.StatefulPlugin[None]):
        id = "nohandle"
        webhook = "/nohandle/events"

        async def build(self, runtime: sdk.PluginRuntime) -> None:
            return None

    with pytest.raises(ConfigError, match=r"adapters\.nohandle: webhook = '/nohandle/events' needs a handle"):
        NoHandle().routes()

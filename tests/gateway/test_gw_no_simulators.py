"""The runtime never imports the simulators (`chatstate.gateway.sim`): they are test and demo
infrastructure. Checked twice: statically, over every import (module level or inside a function)
reachable from the CLI and the adapters, where only `chatstate demo` may lead to them; and in a
real gateway process running all four adapters and echo, through Python's own import log."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from chatstate.gateway.registry import BUNDLED
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
SIM = "chatstate.gateway.sim"
DEMO = "chatstate.gateway.demo"  # `chatstate demo` plays the simulators: the one allowed path


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and ast.unparse(node.test).endswith("TYPE_CHECKING")


def _imports(module: str) -> set[str]:
    """The chatstate modules `module`'s source imports anywhere, except under TYPE_CHECKING."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(Path(spec.origin).read_text())]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            for alias in node.names:  # `from pkg import submodule`
                if importlib.util.find_spec(base) and _is_module(f"{base}.{alias.name}"):
                    found.add(f"{base}.{alias.name}")
        stack.extend(ast.iter_child_nodes(node))
    return {m for m in found if m == "chatstate" or m.startswith("chatstate.")}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def reachable(roots: list[str], *, stop_at: frozenset[str] = frozenset()) -> set[str]:
    """Every chatstate module the roots import, transitively (parent packages included)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen or module in stop_at:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:n]) for n in range(1, len(parts)))  # importing a.b.c runs a, a.b
        todo.extend(_imports(module))
    return seen


def runtime_roots() -> list[str]:
    """The CLI (its `start` path is what runs a gateway) and every module of every adapter."""
    adapters = [
        "chatstate.adapters." + ".".join(p.relative_to(ROOT / "adapters").with_suffix("").parts)
        for p in sorted((ROOT / "adapters").rglob("*.py"))
    ]
    return ["chatstate.gateway.cli", *(m.removesuffix(".__init__") for m in adapters)]


def test_no_import_path_from_the_runtime_leads_to_the_simulators() -> None:
    modules = reachable(runtime_roots(), stop_at=frozenset({DEMO}))
    assert {"chatstate.gateway.gate", "chatstate.adapters.slack.plugin", "chatstate.state"} <= modules
    assert sorted(m for m in modules if m == SIM or m.startswith(SIM + ".")) == []


def test_the_walk_finds_the_demo_path_to_the_simulators() -> None:
    """The same walk, not stopped at the demo, does reach them: the check above can fail."""
    assert any(m.startswith(SIM) for m in reachable(["chatstate.gateway.cli"]))


async def test_a_gateway_running_every_adapter_imports_no_simulator(tmp_path: Path) -> None:
    """Every adapter enabled (as fixtures/gateway.example.toml lists them) and used once, then a
    clean stop: `PYTHONPROFILEIMPORTTIME` makes the process log every module an import statement
    loads (how any module reaches the simulators)."""
    scenarios = list(SCENARIOS.values())
    sims = [s.make_simulator() for s in scenarios]
    gw = GatewayHarness(
        sims,
        adapters={"echo": {"secret": "s"}},
        env={"PYTHONPROFILEIMPORTTIME": "1"},
        state_dir=tmp_path / "state",
    )
    async with gw:
        for scenario, sim in zip(scenarios, sims, strict=True):
            await scenario.first_half(sim)
        _, health = await gw.healthz()
        assert set(health["adapters"]) == {"echo", "slack", "discord", "teams", "matrix"}
        await gw.stop()
        imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", gw.log_path(1).read_text(), re.M)
    # The log names what an import statement loads, not what `importlib.import_module` does (the
    # registry's own load of each plugin module): each adapter shows in the modules its plugin imports.
    adapters = {m.split(".")[2] for m in imported if m.startswith("chatstate.adapters.")}
    assert adapters == set(BUNDLED) - {"echo"}
    assert [m for m in imported if m.startswith(SIM)] == []

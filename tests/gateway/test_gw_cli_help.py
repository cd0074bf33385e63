"""`--version` prints the one version (chatstate/__init__.py, which pyproject.toml reads), and
every flag a command accepts is described in its --help."""

from __future__ import annotations

import argparse
import importlib.abc
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from chatstate import __version__
from chatstate.gateway.cli import build_parser
from chatstate.gateway.sim.harness import run_gateway_cli

ROOT = Path(__file__).resolve().parents[2]
INTERNAL = {"--ready-fd"}  # between a detaching parent and its child, never typed by a person


def _parsers(parser: argparse.ArgumentParser, name: str = "chatstate") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += _parsers(sub, f"{name} {sub_name}")
    return out


def test_every_flag_is_described() -> None:
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            flags = set(action.option_strings)
            if not flags or flags & INTERNAL or isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {sorted(flags)} has no help"


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_every_seconds_flag_refuses_what_is_not_a_wait(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    # a negative or NaN wait once reached select() and ended `stop` in a traceback after its SIGTERM
    for argv in (
        ["start", "--detach", "--ready-timeout", value],
        ["stop", "--timeout", value],
        ["status", "--timeout", value],
        ["restart", "--timeout", value],
        ["restart", "--ready-timeout", value],
    ):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2, argv
        assert f"{argv[-2]}: must be a number of seconds >= 0" in capsys.readouterr().err, argv
    assert build_parser().parse_args(["stop", "--timeout", "0"]).timeout == 0


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["start", "--detatch"], "chatstate start: error: unrecognized arguments: --detatch (did you mean --detach?)"),
        (["stop", "--timout=3"], "chatstate stop: error: unrecognized arguments: --timout=3 (did you mean --timeout?)"),
        (
            ["restart", "--confg", "x"],
            "chatstate restart: error: unrecognized arguments: --confg x (did you mean --config?)",
        ),
        (["status", "--port", "1"], "chatstate status: error: unrecognized arguments: --port 1"),
        (["status", "now"], "chatstate status: error: unrecognized arguments: now"),
    ],
)
def test_a_mistyped_flag_gets_its_commands_usage_and_the_closest_flag(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.endswith(f"\n{said}\n"), err
    assert err.startswith(f"usage: chatstate {argv[0]} [-h]")  # the command's flags, not `chatstate [-h] COMMAND`


def test_an_empty_state_dir_is_bad_usage_not_the_current_folder(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["start", "--state-dir", ""],
        ["stop", "--state-dir", " "],
        ["status", "--state-dir", ""],
        ["restart", "--state-dir", ""],
    ):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2, argv
        assert "--state-dir: must not be empty" in capsys.readouterr().err, argv


async def test_version_is_single_sourced() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "chatstate.__version__"}
    result = await run_gateway_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"chatstate {__version__}\n")


async def test_state_help_names_the_config_flag() -> None:
    for command in ("probe", "inspect"):
        result = await run_gateway_cli("state", command, "--help")
        assert result.returncode == 0
        assert f"chatstate state {command} also takes --config FILE" in result.stdout


def test_every_state_dir_flag_is_named_as_the_docs_name_it() -> None:
    """docs/gateway.md writes `--state-dir D` for every command, `chatstate demo` included (whose --help said
    STATE_DIR)."""
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if "--state-dir" in action.option_strings:
                assert action.metavar == "D", name
    assert "chatstate demo [--state-dir D]" in (ROOT / "docs" / "gateway.md").read_text()


def test_ctrl_c_while_the_command_line_loads_is_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command's first ~0.5 s are imports: a Ctrl-C there exited 130 saying nothing (`python -m chatstate`)
    or with a traceback (the `chatstate` script, which imported the command line itself)."""

    class CtrlC(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> None:
            if name == "chatstate.gateway.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "chatstate.gateway.cli")
    monkeypatch.setattr(sys, "meta_path", [CtrlC(), *sys.meta_path])
    from chatstate.__main__ import main

    assert main() == 130
    assert capsys.readouterr().err == "gateway: interrupted\n"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["chatstate"] == "chatstate.__main__:main"  # the script runs the same

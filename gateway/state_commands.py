"""`chatstate state probe|inspect`: the state CLI (python -m chatstate.state) on the state dir
(or Redis URL) of a gateway's config, with the gateway's exit codes."""

from __future__ import annotations

import argparse
import os
from typing import Any

from chatstate.gateway.config import expanded, load_config
from chatstate.gateway.exits import BAD_CONFIG, STORE_UNUSABLE, GatewayExit
from chatstate.gateway.launch import CONFIG_ENV, config_path
from chatstate.gateway.pidfile import check_state_dir

CONFIG_HELP = (
    f"--config FILE: the gateway config whose state dir (or [state] url) to use (default ${CONFIG_ENV}; "
    "without one, --state-dir or $CHATSTATE_HOME or ~/.chatstate)"
)
COMMANDS = {
    "probe": "check state dir, open, schema, a write-read-delete and a checkpoint (JSON)",
    "inspect": "list namespaces with live/expired counts, and keys with created/expires",
}


def add_parsers(sub: Any) -> None:
    """`chatstate state probe|inspect [--config FILE] [flags]`: real subcommands whose flags
    belong to the state CLI (python -m chatstate.state), which parses them and prints their
    --help, so the two never drift."""
    st = sub.add_parser(
        "state",
        help="probe|inspect the state database (python -m chatstate.state)",
        description="The state CLI (python -m chatstate.state) on this gateway's state dir; "
        "`chatstate state probe --help` lists a command's flags.",
    )
    st_sub = st.add_subparsers(dest="state_command", required=True, metavar="{probe,inspect}")
    for name, text in COMMANDS.items():
        p = st_sub.add_parser(
            name,
            help=text,
            add_help=False,
            usage=f"chatstate state {name} [--config FILE] [flags of python -m chatstate.state {name}]",
            description=CONFIG_HELP,
        )
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=run)


def parse(argv: list[str]) -> argparse.Namespace | None:
    """`argv` as `run` takes it when it is `state probe|inspect ...`, else None. Its flags are the
    state CLI's (and --config), which argparse's REMAINDER would refuse when they start with --,
    so they skip the gateway's parser."""
    command = next((a for a in argv[1:] if a in COMMANDS), None) if argv[:1] == ["state"] else None
    if command is None:
        return None
    i = argv.index(command, 1)
    return argparse.Namespace(func=run, state_command=command, rest=argv[1:i] + argv[i + 1 :])


def run(args: argparse.Namespace) -> int:
    """Run the state CLI's command on this gateway's state dir (`--config FILE` anywhere among
    the flags). Its "probe failed / unusable" (1) becomes exit 3, and an unusable state dir is
    one `gateway:` line (exit 3), as for `start`."""
    from chatstate.state import __main__ as state_cli

    rest = [args.state_command, *args.rest]
    config_file = config_path(os.environ)
    if "--config" in rest:
        i = rest.index("--config")
        if i + 1 >= len(rest):
            raise GatewayExit(2, "--config needs a FILE")
        config_file = rest[i + 1]
        del rest[i : i + 2]
    if not {"--state-dir", "--path", "--url", "-h", "--help"} & set(rest):
        config = load_config(config_file)
        if config.state_url and args.state_command == "probe":
            rest += ["--url", config.state_url]
        elif config.state_url:  # the SQLite file in the state dir is not this gateway's store: never list it instead
            from chatstate.state._database import shown_url

            raise GatewayExit(
                BAD_CONFIG,
                f"state inspect reads a SQLite file, but this gateway's store is Redis ({shown_url(config.state_url)}): "
                "check it with `chatstate state probe`, or give --state-dir D or --path FILE to inspect a SQLite file",
            )
        else:
            rest += ["--state-dir", str(config.state_dir)]
    if "--state-dir" in rest and rest.index("--state-dir") + 1 < len(rest):
        check_state_dir(expanded(rest[rest.index("--state-dir") + 1], "--state-dir").absolute(), create=False)
    try:
        code = state_cli.main(rest, prog="chatstate state")
    except SystemExit as exc:  # argparse in the state CLI: --help (0) or bad usage (2)
        if {"-h", "--help"} & set(rest):  # the one flag the state CLI does not know of
            print(f"\nchatstate state {args.state_command} also takes {CONFIG_HELP}")
        return int(exc.code or 0)
    return STORE_UNUSABLE if code == 1 else code

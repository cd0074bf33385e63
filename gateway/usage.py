"""The parser of each `chatstate` command: a mistyped flag is answered with that command's usage
and the closest real flag, never with the top level's usage, which lists no flags at all."""

from __future__ import annotations

import argparse
import difflib
from typing import Any


class Command(argparse.ArgumentParser):
    """`chatstate start --detatch`: `chatstate start: error: unrecognized arguments: --detatch (did
    you mean --detach?)` under start's usage (exit 2, as any usage error)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:  # type: ignore[override]
        known, extra = super().parse_known_args(args, namespace)
        if extra:  # argparse would leave them to the top level, which names no command
            like = difflib.get_close_matches(extra[0].partition("=")[0], list(self._option_string_actions), 1)
            self.error(f"unrecognized arguments: {' '.join(extra)}" + "".join(f" (did you mean {m}?)" for m in like))
        return known, extra

"""Docs quote only errors the code can print, and say why rather than which issue.

The convention for a quoted error in README.md and docs/: a line starting with `gateway: ` in a
fenced code block, or an inline code span starting with `gateway: ` or `config error: `. In it,
`<...>`, `...` and `…` stand for what varies. The check: every run of three or more plain words
in the quote (words of letters, with their punctuation; values such as keys, paths, numbers and
quoted names break a run) appears in a string literal of the package's code (a run may span two
literals joined at run time, as `config error: <key>: <why>` is); pydantic's messages count as
the code's, since the config errors pass them on.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pydantic_core._pydantic_core import list_all_errors

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CODE_DIRS = ("gateway", "state", "adapters", "chatstate")
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|…")
WORD = re.compile(r"[(\"]?[A-Za-z][a-z-]*[,;:)\"]?")  # a plain word; `adapters.echo`, `$X`, `/p` are values
HOLE = "\x00"


def quoted_errors() -> list[tuple[str, str]]:
    """(where, text) of every quoted error in the docs, by the convention above."""
    out = []
    for path in DOCS:
        fenced = False
        for n, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{n}"
            if line.startswith("```"):
                fenced = not fenced
                continue
            if fenced and line.startswith("gateway: "):
                out.append((where, line))
            elif not fenced:
                out += [(where, span) for span in re.findall(r"`((?:gateway|config error): [^`]+)`", line)]
    return out


def code_literals() -> str:
    """Every string literal of the package, f-string holes as HOLE, one per line."""
    texts = []
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    texts.append(node.value)
                elif isinstance(node, ast.JoinedStr):
                    texts.append(
                        "".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values)  # type: ignore[misc]
                    )
    # pydantic's own messages, which `config error: <key>: <why>` passes on
    texts += [re.sub(r"\{\w+\}", HOLE, e["message_template_python"]) for e in list_all_errors()]
    return "\n".join(" ".join(t.split()) for t in texts)


def word_runs(text: str) -> list[list[str]]:
    """Runs of three or more consecutive plain words (the part of a message that never varies)."""
    runs: list[list[str]] = []
    current: list[str] = []
    for token in PLACEHOLDER.sub(" \x01 ", text).split():
        if WORD.fullmatch(token):
            current.append(token)
            continue
        runs.append(current)
        current = []
    runs.append(current)
    return [run for run in runs if len(run) >= 3]


def printable(run: list[str], corpus: str) -> bool:
    """The run is in one literal; or in two joined at run time (the end of one, the start of
    the next); or around one word that is itself a value (the literals before and after it)."""
    if " ".join(run) in corpus:
        return True

    def ends(words: list[str]) -> bool:
        return re.search(re.escape(" ".join(words).rstrip(",;:.")) + r"[\s:;,.]*(?:\x00|$)", corpus, re.M) is not None

    def starts(words: list[str]) -> bool:
        return re.search(r"(?:^|\x00)[\s:;,.()]*" + re.escape(" ".join(words)), corpus, re.M) is not None

    if any(ends(run[:i]) and starts(run[i:]) for i in range(1, len(run))):
        return True
    return any((not run[:i] or ends(run[:i])) and (not run[i + 1 :] or starts(run[i + 1 :])) for i in range(len(run)))


def test_every_quoted_error_is_one_the_code_can_print() -> None:
    corpus = code_literals()
    quotes = quoted_errors()
    assert len(quotes) >= 5  # the convention is in use
    stale = [
        f"{where}: {' '.join(run)!r} in {text!r}"
        for where, text in quotes
        for run in word_runs(text)
        if not printable(run, corpus)
    ]
    assert not stale, "docs quote errors the code does not print:\n" + "\n".join(stale)


# the gateway's process and CLI modules (the other packages are being reworked elsewhere)
GATEWAY_MODULES = "app cli config cpu demo echo ingress launch logs pidfile registry reply server settings".split()
GATEWAY_MODULES += ["state_commands", "status"]


def test_docs_and_gateway_modules_say_why_not_which_issue() -> None:
    history = re.compile(r"\b[Ii]ssues? #?\d+|\b[Ii]ssue's\b")
    modules = [ROOT / "gateway" / f"{name}.py" for name in GATEWAY_MODULES]
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in [*DOCS, *modules, ROOT / "chatstate" / "__init__.py", ROOT / "pyproject.toml"]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if history.search(line)
    ]
    assert not found, "\n".join(found)

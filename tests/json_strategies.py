"""Hypothesis strategies for hostile JSON: any JSON value, and a document with one to three
fields changed (another value, deleted) or made null/left out, as a platform sends optional
fields (drawn before the document exists, when its shape is known: `nullings`). Shared by the
gateway's fuzz and the adapters' hostile-input tests."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import strategies as st

Path = tuple[Any, ...]  # keys and list indexes from a document's root
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def field_paths(obj: Any, prefix: Path = ()) -> Iterator[Path]:
    """`prefix` and the path of every value below `obj` (keys and list indexes)."""
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from field_paths(v, (*prefix, k))


def _member(path: Path) -> bool:
    """True for the path of an object's member (not a list item)."""
    return not isinstance(path[-1], int)


def _parent(doc: Any, path: Path) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


def _path(draw: st.DrawFn, doc: Any, where: Callable[[Path], bool] = bool) -> Path | None:
    """The path of a field of `doc` for which `where` holds, drawn at random; None when none does."""
    paths = [p for p in list(field_paths(doc))[1:] if where(p)]
    return draw(st.sampled_from(paths)) if paths else None


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with one to three fields replaced by arbitrary JSON or deleted."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        if (path := _path(draw, doc)) is None:
            break
        parent = _parent(doc, path)
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return doc


@st.composite
def nullings(draw: st.DrawFn, base: Any, where: Callable[[Path], bool] = _member) -> list[tuple[Path, bool]]:
    """One to three members of `base` (of those whose path is `where`), each to be made null or
    left out (True) in turn, as a platform sends optional fields; `null_out` applies them to
    `base` or to any document of its shape."""
    doc, changes = copy.deepcopy(base), []
    for _ in range(draw(st.integers(1, 3))):
        if (path := _path(draw, doc, where)) is None:
            break
        changes.append((path, draw(st.booleans())))
        null_out(doc, changes[-1:])
    return changes


def null_out(doc: Any, changes: list[tuple[Path, bool]]) -> Any:
    """`doc` (changed in place) with each of `changes` from `nullings`; raises KeyError or
    IndexError when `doc` is not of the shape they were drawn on."""
    for path, omit in changes:
        parent = _parent(doc, path)
        if omit:
            del parent[path[-1]]
        else:
            parent[path[-1]] = None
    return doc


@st.composite
def nulled(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with one to three members null or left out."""
    return null_out(copy.deepcopy(base), draw(nullings(base)))

"""Hypothesis strategies for hostile JSON: any JSON value, and a document with one to three
fields changed (another value, deleted) or made null/left out, as a platform sends optional
fields. Shared by the gateway's fuzz and the adapters' hostile-input tests."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def field_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """`prefix` and the path of every value below `obj` (keys and list indexes)."""
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from field_paths(v, (*prefix, k))


def _field(draw: st.DrawFn, doc: Any, *, objects_only: bool = False) -> tuple[Any, Any] | None:
    """A field of `doc` drawn at random (with `objects_only`, no list item), as (its parent, its
    key or index); None when `doc` has no such field."""
    paths = [p for p in list(field_paths(doc))[1:] if not (objects_only and isinstance(p[-1], int))]
    if not paths:
        return None
    path = draw(st.sampled_from(paths))
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    return parent, path[-1]


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with one to three fields replaced by arbitrary JSON or deleted."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        if (field := _field(draw, doc)) is None:
            break
        parent, key = field
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(json_values)
    return doc


@st.composite
def nulled(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with one to three fields null or left out, as a platform sends optional fields."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        if (field := _field(draw, doc, objects_only=True)) is None:
            break
        parent, key = field
        if draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = None
    return doc

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


@st.composite
def _edited(draw: st.DrawFn, base: dict[str, Any], *, nulls: bool) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in list(field_paths(doc))[1:] if not (nulls and isinstance(p[-1], int))]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = None if nulls else draw(json_values)
    return doc


def mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with one to three fields replaced by arbitrary JSON or deleted."""
    return _edited(base, nulls=False)


def nulled(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with one to three object fields null or left out, as a platform sends optional fields."""
    return _edited(base, nulls=True)

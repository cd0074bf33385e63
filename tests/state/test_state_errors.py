"""One error type with stable codes and operations; messages name sizes, never values."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
from state_support import STORE_METHODS

from chatstate import state
from chatstate.state import ErrorCode, StateStoreError, open_keyed_store
from chatstate.state._spec import OPERATIONS

SECRET = "SECRET-VALUE-MARKER"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "state.md"


def test_codes_and_operations_are_the_contracts():
    assert {c.value for c in ErrorCode} == {
        "OPEN_FAILED",
        "SCHEMA_UNSUPPORTED",
        "WRITE_FAILED",
        "READ_FAILED",
        "CORRUPT",
        "LIMIT_EXCEEDED",
        "INVALID_INPUT",
        "UNAVAILABLE",
        "CONFLICT",  # CONFLICT: v2's update()
    }
    assert OPERATIONS == STORE_METHODS | {"open", "sweep", "probe", "commit"}  # commit: commit_staged


def test_error_carries_code_operation_and_path_and_survives_pickling():
    err = StateStoreError("WRITE_FAILED", "register", "disk full", path="/x/state.sqlite")
    assert (err.code, err.operation, err.path) == (ErrorCode.WRITE_FAILED, "register", "/x/state.sqlite")
    assert err.code == "WRITE_FAILED" and isinstance(err, Exception)
    assert "WRITE_FAILED" in str(err) and "register" in str(err) and "/x/state.sqlite" in str(err)
    back = pickle.loads(pickle.dumps(err))  # errors cross process boundaries (executors, workers)
    assert (back.code, back.operation, back.path, str(back)) == (err.code, err.operation, err.path, str(err))
    with pytest.raises(ValueError):
        StateStoreError("NOT_A_CODE", "register", "x")


def test_store_errors_name_the_database(make_store):
    store = make_store("p", "ns", max_entries=1, overflow="reject-new")
    store.register("a", SECRET)
    with pytest.raises(StateStoreError) as err:
        store.register("b", SECRET)
    assert err.value.path == store.location and err.value.path
    assert SECRET not in str(err.value)


def nested(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


OFFENDERS = {
    "too-big": ("LIMIT_EXCEEDED", SECRET * 4_000),
    "too-deep": ("LIMIT_EXCEEDED", nested(65, SECRET)),
    "tuple": ("INVALID_INPUT", (SECRET,)),
    "set": ("INVALID_INPUT", {SECRET}),
    "bytes": ("INVALID_INPUT", SECRET.encode()),
    "nan": ("INVALID_INPUT", {SECRET: float("nan")}),
    "int-key": ("INVALID_INPUT", {1: SECRET}),
    "surrogate": ("INVALID_INPUT", SECRET + "\ud800"),
}


@pytest.mark.parametrize(("code", "value"), OFFENDERS.values(), ids=OFFENDERS.keys())
def test_messages_never_contain_the_offered_value(make_store, code, value):
    store = make_store("p", "ns", max_entries=10)
    with pytest.raises(StateStoreError) as err:
        store.register("k", value)
    assert err.value.code == code
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)
    shown = err.value.__cause__ or (None if err.value.__suppress_context__ else err.value.__context__)
    assert shown is None or SECRET not in str(shown)  # a traceback would print a chained error


def test_messages_name_the_limit_and_the_size(make_store):
    store = make_store("p", "ns", max_entries=10)
    with pytest.raises(StateStoreError, match=r"key is 513 bytes; the limit is 512"):
        store.register("k" * 513, 1)
    with pytest.raises(StateStoreError, match=r"65537 bytes .*65536"):
        store.register("k", "x" * 65_535)


def test_unavailable_for_an_unknown_url_scheme_is_invalid_input():
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url="memcached://localhost")
    assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "open")
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url="redis://x", path="/tmp/x")
    assert err.value.code == "INVALID_INPUT"


def documented_names() -> list[str]:
    """The bullet list under "## Public names" in docs/state.md."""
    section = DOCS.read_text(encoding="utf-8").split("\n## Public names\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([A-Za-z_][A-Za-z0-9_]*)`", section, flags=re.MULTILINE)


def test_all_is_exactly_what_docs_state_md_documents():
    documented = documented_names()
    assert len(documented) >= 15
    assert sorted(state.__all__) == sorted(documented)
    assert len(state.__all__) == len(set(state.__all__))
    assert all(hasattr(state, name) for name in state.__all__)


def test_documented_operations_and_codes_are_the_real_ones():
    text = DOCS.read_text(encoding="utf-8")
    assert all(f"`{code.value}`" in text for code in ErrorCode)
    assert all(f"`{op}`" in text for op in OPERATIONS)

"""`Database`: one location opened once, and the one-call wrappers built on it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from state_support import T0_MS

from chatstate import state
from chatstate.state import Database, StateStoreError, _database, checkpoint, open_keyed_store, probe, sweep_expired


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every backend lookup a Database makes (state/_database.py's `acquire`, through `Database._acquire`)."""
    seen: list[str] = []
    real = _database.Database._acquire

    def counting(self: Any) -> Any:
        backend = real(self)
        seen.append(backend.location)
        return backend

    monkeypatch.setattr(_database.Database, "_acquire", counting)
    return seen


def test_a_database_opens_its_backend_once_for_stores_sweeps_probes_and_checkpoints(
    target: dict[str, Any], opens: list[str]
) -> None:
    with Database(**target) as db:
        assert opens == []  # creating one does no I/O
        store = db.open_keyed_store("p", "ns", max_entries=10, clock=lambda: T0_MS)
        store.register("old", 1, ttl_ms=1)
        store.register("kept", 2)
        for _ in range(3):
            assert db.probe()["ok"] is True
            db.checkpoint()
        assert db.sweep_expired(now_ms=T0_MS + 10) == 1
        assert db.sweep_expired(now_ms=T0_MS + 10) == 0
        assert store.lookup("kept") == 2
        assert len(opens) == 1 and db.opens == 1
        store.close()
        assert db.probe()["ok"] is True  # the Database still holds the backend open
    assert len(opens) == 1
    with pytest.raises(StateStoreError) as err:
        db.sweep_expired()
    assert err.value.code == "UNAVAILABLE"
    assert db.probe()["ok"] is False


def test_stores_outlive_the_database_that_opened_them(target: dict[str, Any]) -> None:
    db = Database(**target)
    store = db.open_keyed_store("p", "ns", max_entries=10)
    db.close()
    db.close()  # twice: a no-op
    store.register("k", 1)
    assert store.lookup("k") == 1
    store.close()
    with pytest.raises(StateStoreError) as err:
        db.open_keyed_store("p", "ns", max_entries=10)
    assert err.value.code == "UNAVAILABLE"


def test_a_closed_database_names_the_refused_call(target: dict[str, Any]) -> None:
    db = Database(**target)
    db.close()
    calls = {
        "sweep": db.sweep_expired,
        "close": db.checkpoint,  # the operation checkpoint() reports, as on an open database
        "open": lambda: db.open_keyed_store("p", "ns", max_entries=10),
    }
    for operation, call in calls.items():
        with pytest.raises(StateStoreError) as err:
            call()
        assert (err.value.code, err.value.operation) == ("UNAVAILABLE", operation)


def test_a_failed_open_is_tried_again_by_the_next_call(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state dir should be")
    db = Database(blocker / "plugin-state" / "state.sqlite")
    with pytest.raises(StateStoreError):
        db.sweep_expired()
    result = db.probe()
    assert result["ok"] is False and result["steps"][0]["name"] == "state-dir"
    blocker.unlink()
    with db:
        assert db.sweep_expired() == 0
        assert db.probe()["ok"] is True and db.opens == 1


def test_pair_settings_are_checked_as_for_stores_opened_by_path(target: dict[str, Any]) -> None:
    with Database(**target) as db:
        a = db.open_keyed_store("p", "ns", max_entries=10)
        with pytest.raises(StateStoreError) as err:
            open_keyed_store("p", "ns", max_entries=11, **target)
        assert err.value.code == "INVALID_INPUT"
        b = open_keyed_store("p", "ns", max_entries=10, **target)  # by path: the same backend
        b.register("k", 1)
        assert a.lookup("k") == 1
        a.close()
        b.close()


async def test_the_async_open_gives_the_async_twin(target: dict[str, Any]) -> None:
    with Database(**target) as db:
        store = await db.open_async_keyed_store("p", "ns", max_entries=10)
        await store.register("k", {"v": 1})
        assert await store.lookup("k") == {"v": 1}
        await store.close()


def test_the_module_level_wrappers_still_work(target: dict[str, Any], opens: list[str]) -> None:
    store = open_keyed_store("p", "ns", max_entries=10, clock=lambda: T0_MS, **target)
    store.register("old", 1, ttl_ms=1)
    store.register("kept", 2)
    result = probe(**target)
    assert result["ok"] is True
    assert result["database_path"] == (target.get("url") or str(state.database_path(target["path"])))
    checkpoint(**target)
    assert sweep_expired(now_ms=T0_MS + 10, **target) == 1
    assert store.lookup("kept") == 2
    store.close()
    # Each wrapper opened a Database for its one call and closed it: with no store open any
    # more, the backend is closed, and the next call opens it afresh and works.
    assert len(opens) == 3
    assert sweep_expired(**target) == 0 and probe(**target)["ok"] is True


def test_one_database_is_safe_from_many_threads(target: dict[str, Any], opens: list[str]) -> None:
    with Database(**target) as db:
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                with db.open_keyed_store("p", f"ns{i}", max_entries=10) as s:
                    s.register("k", i)
                    db.sweep_expired()
                    assert s.lookup("k") == i
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == [] and len(opens) == 1

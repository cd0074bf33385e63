"""The Redis backend's conditional commit: CLAIM and MATCH writes checked inside the one write
script, and a failed condition leaves every key exactly as it was (the script keeps an undo log,
since Redis has no rollback)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis_support import with_prefix
from state_support import FakeClock, raw_redis

from chatstate.state import KeyedStore, StateStoreError, open_keyed_store
from chatstate.state._spec import Mode, Write, new_version


@pytest.fixture(params=["redis", "valkey", "redis-cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis-cluster":
        base = request.getfixturevalue("cluster").url()
    else:
        base = request.getfixturevalue("valkey_url" if request.param == "valkey" else "redis_url")
    return with_prefix(base, f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stores(url: str, clock: FakeClock) -> Iterator[dict[str, KeyedStore]]:
    opened = {
        "claims": open_keyed_store("p", "claims", max_entries=10, url=url, clock=clock),
        "full": open_keyed_store("p", "full", max_entries=2, url=url, clock=clock),
        "capped": open_keyed_store("p", "capped", max_entries=1, overflow="reject-new", url=url, clock=clock),
    }
    yield opened
    for store in opened.values():
        store.close()


def staged(
    store: KeyedStore, key: str, value: Any = None, *, mode: Mode = Mode.UPSERT, expect: int | None = None
) -> Write:
    """A Write as `commit_staged` hands it to the backend."""
    now = store._now("commit")
    text = None if mode is Mode.DELETE else f'"{value}"'
    return Write(store.spec, key, text, now, None, new_version(), mode, expect)


def commit(stores: dict[str, KeyedStore], writes: list[Write]) -> bool:
    return bool(stores["claims"]._backend.commit(writes))


def dump(url: str) -> list[tuple[Any, ...]]:
    """Every key under the test's prefix, serialized, and whether it has a server-side expiry."""
    base, _, query = url.partition("?")
    client, prefix = raw_redis(base), query.split("prefix=")[1].split("&")[0]
    try:
        return sorted((k, client.dump(k), client.pttl(k) > 0) for k in client.scan_iter(match=f"{prefix}:*"))
    finally:
        client.close()


def test_a_claim_that_wins_writes_every_row(stores):
    claims, full = stores["claims"], stores["full"]
    assert commit(stores, [staged(claims, "c", "mine", mode=Mode.CLAIM), staged(full, "x", 1), staged(full, "y", 2)])
    assert (claims.lookup("c"), full.lookup("x"), full.lookup("y")) == ("mine", "1", "2")


def test_a_claim_that_loses_writes_nothing_even_after_evictions_and_deletes(stores, url, clock):
    claims, full, capped = stores["claims"], stores["full"], stores["capped"]
    full.register("old", "o", ttl_ms=5)  # expired below: dropped when room is made, then restored
    clock.advance(1)
    full.register("mid", "m")
    claims.register("gone", "g", ttl_ms=60_000)
    claims.register("c", "theirs")
    clock.advance(10)
    before, held = dump(url), claims.lookup_entry("c")
    writes = [
        staged(full, "new1", 1),  # full namespace: drops the expired row ...
        staged(full, "new2", 2),  # ... and evicts "mid"
        staged(claims, "gone", mode=Mode.DELETE),
        staged(stores["capped"], "k", 3),  # a namespace registered for the first time
        staged(claims, "c", "mine", mode=Mode.CLAIM),
    ]
    assert commit(stores, writes) is False
    assert dump(url) == before
    after = claims.lookup_entry("c")
    assert after is not None and held is not None
    assert (after.value, after.version) == (held.value, held.version)
    assert capped.entries() == []


def test_an_expired_row_counts_as_absent(stores, clock):
    claims = stores["claims"]
    claims.register("c", "theirs", ttl_ms=10)
    clock.advance(10)
    assert commit(stores, [staged(claims, "c", "mine", mode=Mode.CLAIM)])
    assert claims.lookup("c") == "mine"


def test_match_holds_only_for_the_live_rows_version(stores, url):
    claims = stores["claims"]
    claims.register("k", "v1")
    entry = claims.lookup_entry("k")
    assert entry is not None
    before = dump(url)
    wrong = [staged(claims, "other", 1), staged(claims, "k", "v2", mode=Mode.MATCH, expect=entry.version + 1)]
    assert commit(stores, wrong) is False
    assert dump(url) == before
    right = [staged(claims, "other", 1), staged(claims, "k", "v2", mode=Mode.MATCH, expect=entry.version)]
    assert commit(stores, right) is True
    assert (claims.lookup("other"), claims.lookup("k")) == ("1", "v2")


def test_conditions_see_the_earlier_writes_of_the_batch(stores):
    claims = stores["claims"]
    claims.register("c", "theirs")
    assert commit(stores, [staged(claims, "c", mode=Mode.DELETE), staged(claims, "c", "mine", mode=Mode.CLAIM)])
    assert claims.lookup("c") == "mine"
    assert not commit(stores, [staged(claims, "d", "x"), staged(claims, "d", "y", mode=Mode.CLAIM)])
    assert claims.lookup("d") is None


def test_a_full_reject_new_namespace_after_a_claim_raises_and_writes_nothing(stores, url):
    claims, capped = stores["claims"], stores["capped"]
    capped.register("taken", 1)
    before = dump(url)
    with pytest.raises(StateStoreError) as err:
        commit(stores, [staged(claims, "c", "mine", mode=Mode.CLAIM), staged(capped, "k", 2)])
    assert (err.value.code, err.value.operation) == ("LIMIT_EXCEEDED", "commit")
    assert dump(url) == before


def test_single_claims_and_matches_answer_as_before(stores):
    claims = stores["claims"]
    backend = claims._backend
    assert backend.write(staged(claims, "k", "a", mode=Mode.CLAIM)) is True
    assert backend.write(staged(claims, "k", "b", mode=Mode.CLAIM)) is False
    entry = claims.lookup_entry("k")
    assert entry is not None
    assert backend.write(staged(claims, "k", "c", mode=Mode.MATCH, expect=entry.version)) is True
    assert backend.write(staged(claims, "k", "d", mode=Mode.MATCH, expect=entry.version)) is False
    assert claims.lookup("k") == "c"


def test_a_refused_claim_is_an_answer_even_when_no_replica_acknowledges(redis_url: str) -> None:
    """With `min_replicas_acked`, a write the replicas did not acknowledge in time is UNAVAILABLE:
    it may not survive a failover. A claim (or compare-and-set) the primary refused wrote nothing,
    so there is nothing to survive: its "no" is the answer. Made UNAVAILABLE, it would send two
    gateways racing through a failover to decide the claim in memory, and both would work."""
    url = with_prefix(redis_url, f"t{uuid.uuid4().hex[:12]}&min_replicas_acked=1&replica_ack_timeout_ms=20")
    with open_keyed_store("p", "claims", max_entries=10, url=url) as store:  # no replica at all
        with pytest.raises(StateStoreError) as unacked:
            store.register_if_absent("k", {"owner": "a"})  # applied on the primary, unacknowledged
        assert unacked.value.code == "UNAVAILABLE"
        assert store.register_if_absent("k", {"owner": "b"}) is False
        version = store.lookup_entry("k").version
        assert store.compare_and_set("k", {"owner": "b"}, version=version + 1) is False
        assert store.lookup("k") == {"owner": "a"}

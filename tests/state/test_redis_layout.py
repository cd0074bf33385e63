"""What the Redis backend keeps underneath the shared contract: prefixes, server-side expiry,
per-namespace indexes, batched sweeps, schema marker, URL options and probe."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from redis_support import with_prefix
from state_support import T0_MS, FakeClock

from chatstate.state import Database, StateStoreError, StoreSettings, open_keyed_store, probe, sweep_expired
from chatstate.state._database import database_of
from chatstate.state._redis_layout import RedisOptions


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(redis_url: str, prefix: str) -> str:
    return with_prefix(redis_url, prefix)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


def keys_under(client: redis.Redis, prefix: str) -> set[str]:
    return set(client.scan_iter(match=f"{prefix}:*"))


def test_every_key_carries_the_prefix_and_prefixes_do_not_see_each_other(redis_url, client):
    a, b = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    with (
        open_keyed_store("slack", "slack.events", max_entries=10, url=with_prefix(redis_url, a)) as sa,
        open_keyed_store("slack", "slack.events", max_entries=10, url=with_prefix(redis_url, b)) as sb,
    ):
        sa.register("T1:E1", {"received_at": 1})
        assert sb.lookup("T1:E1") is None
        assert sb.register_if_absent("T1:E1", {"received_at": 2}) is True
        assert sa.lookup("T1:E1") == {"received_at": 1}
        assert sb.clear() == 1
        assert sa.entries()[0].value == {"received_at": 1}
    assert keys_under(client, a) and all(k.startswith(f"{a}:") for k in keys_under(client, a))


def test_plugin_ids_with_colons_cannot_alias_other_pairs(url):
    # "a:b" + namespace "c" must not share keys with plugin "a" + a namespace that looks alike.
    with (
        open_keyed_store("a:b", "c", max_entries=5, url=url) as s1,
        open_keyed_store("a", "b-c", max_entries=5, url=url) as s2,
    ):
        s1.register("k", 1)
        assert s2.lookup("k") is None
        assert s2.entries() == []


def test_a_row_with_a_ttl_gets_a_server_side_expiry_after_the_client_one(url, prefix, client):
    clock = FakeClock()  # far behind the server's clock: absolute PEXPIREAT would delete at once
    with open_keyed_store("p", "ns", max_entries=5, url=url, clock=clock) as store:
        store.register("ttl", "v", ttl_ms=5_000)
        store.register("forever", "v")
        rows = {k.rsplit(":r:", 1)[1]: k for k in keys_under(client, prefix) if ":r:" in k}
        grace = RedisOptions().expiry_grace_ms
        assert 5_000 < client.pttl(rows["ttl"]) <= 5_000 + grace
        assert client.pttl(rows["forever"]) == -1
        assert store.lookup("ttl") == "v"  # the client clock decides visibility ...
        clock.advance(5_000)
        assert store.lookup("ttl") is None  # ... to the millisecond, like SQLite
        store.register("ttl", "again")  # re-registered without a TTL: the server expiry goes too
        assert client.pttl(rows["ttl"]) == -1


def test_expiry_grace_is_configurable(redis_url, prefix, client):
    url = with_prefix(redis_url, prefix) + "&expiry_grace_ms=0"
    with open_keyed_store("p", "ns", max_entries=5, url=url) as store:
        store.register("k", "v", ttl_ms=60_000)
        (row,) = [k for k in keys_under(client, prefix) if ":r:" in k]
        assert 0 < client.pttl(row) <= 60_000


def test_sweep_removes_expired_rows_and_index_entries_in_batches(url, prefix, client):
    clock = FakeClock()
    settings = StoreSettings(sweep_batch_rows=2)
    with (
        open_keyed_store("p", "one", max_entries=50, url=url, clock=clock, settings=settings) as one,
        open_keyed_store("p", "two", max_entries=50, url=url, clock=clock, settings=settings) as two,
    ):
        for i in range(5):
            one.register(f"old{i}", i, ttl_ms=10)
        for i in range(3):
            two.register(f"old{i}", i, ttl_ms=10)
        one.register("live", "stays")
        clock.advance(10)
        assert sweep_expired(url=url, settings=settings, now_ms=clock()) == 8
        assert [e.key for e in one.entries()] == ["live"]
        remaining = keys_under(client, prefix)
        assert not [k for k in remaining if ":r:old" in k]
        assert client.zcard(f"{prefix}:p:{{p}}:n:one:order") == 1
        assert client.zcard(f"{prefix}:p:{{p}}:n:one:exp") == 0
        # the emptied namespace left the registry the sweep walks
        assert client.smembers(f"{prefix}:p:{{p}}:namespaces") == {"one"}
        assert sweep_expired(url=url, settings=settings, now_ms=clock()) == 0


def test_a_newer_schema_marker_is_refused(url, prefix, client):
    client.set(f"{prefix}:schema", 99)
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url=url)
    assert (err.value.code, err.value.operation) == ("SCHEMA_UNSUPPORTED", "open")


@pytest.mark.parametrize("option", ["bogus=1", "retries=many", "prefix=", "retries=-1"])
def test_bad_url_options_are_invalid_input(redis_url, option):
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url=f"{redis_url}?{option}")
    assert err.value.code == "INVALID_INPUT"


def test_credentials_never_reach_locations_or_messages():
    dead = "redis://someone:hunter2@127.0.0.1:1/0?retries=0"
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url=dead)
    assert err.value.code == "UNAVAILABLE"
    assert "hunter2" not in str(err.value)
    assert err.value.path == "redis://someone:***@127.0.0.1:1/0?retries=0"


HIDDEN = "hunter2secret"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://u:ab{HIDDEN}/x@127.0.0.1:1/0?retries=0",  # a '/' in the password, not percent-encoded
        f"redis://u:ab{HIDDEN}?x@127.0.0.1:1?retries=0",  # a '?' in it, and no /db after the host
        f"redis://u:a#{HIDDEN}@127.0.0.1:1/0?retries=0",  # a '#'
        f"redis://u:{HIDDEN}[x@127.0.0.1:1/0?retries=0",  # a '[': Python's URL parser raises
        f"redis://u:{HIDDEN}@127.0.0.1:1/0?retries=0&ssl_certfile=/home/a@b/c.pem",  # '@' in an option
        f"rediss://127.0.0.1:1/0?retries=0&ssl_password={HIDDEN}",  # redis-py's key-file password
        f"redis://127.0.0.1:1/0?retries=0&%70assword={HIDDEN}",  # an option name percent-encoded
        f"redis+sentinel://u:ab{HIDDEN}/x@127.0.0.1:1/mymaster?retries=0",
    ],
)
def test_a_password_is_never_shown_however_the_url_is_spelled(url):
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url=url)
    assert err.value.operation == "open"
    shown = [str(err.value), str(err.value.path), Database(url=url).location, json.dumps(probe(url=url))]
    assert HIDDEN not in "\n".join(shown)


def test_probe_with_url_runs_every_step_and_leaves_no_probe_rows(url, prefix, client):
    result = probe(url=url)
    assert result["ok"] is True
    assert [s["name"] for s in result["steps"]] == ["open", "schema", "write-read-delete", "checkpoint"]
    assert not [k for k in keys_under(client, prefix) if ":r:" in k]


def test_probe_of_an_unreachable_redis_says_unavailable_and_does_not_raise():
    result = probe(url="redis://127.0.0.1:1/0?retries=0")
    assert result["ok"] is False
    assert result["steps"][0] == {**result["steps"][0], "name": "open", "ok": False, "code": "UNAVAILABLE"}


def test_probe_cli_accepts_a_url(url):
    out = subprocess.run(
        [sys.executable, "-m", "chatstate.state", "probe", "--url", url], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True


def test_large_expiry_and_clock_values_survive_the_lua_boundary(url):
    # Lua prints big numbers as 1.7e+12: every number must cross as a string, digit for digit.
    clock = FakeClock(T0_MS + 123)
    with open_keyed_store("p", "ns", max_entries=5, url=url, clock=clock) as store:
        store.register("k", 1, ttl_ms=2**53 - 1)
        (entry,) = store.entries()
        assert (entry.created_at, entry.expires_at) == (T0_MS + 123, T0_MS + 123 + 2**53 - 1)
        assert store.lookup_entry("k") == entry


def test_one_redis_database_spelled_several_ways_is_one_database_for_the_reopen_check(redis_url, prefix):
    parts = urlsplit(redis_url)
    db = parts.path.strip("/") or "0"
    a = open_keyed_store("p", "ns", max_entries=5, url=f"redis://{parts.netloc}/{db}?prefix={prefix}")
    try:
        others = [  # scheme case, db as an option, options reordered or at their defaults
            f"REDIS://{parts.netloc}/?prefix={prefix}&db={db}",
            f"redis://{parts.netloc}/{db}?retries=3&prefix={prefix}",
            f"redis://{parts.netloc}/{db}?prefix={prefix}&socket_timeout_s=5.0&expiry_grace_ms=60000",
        ]
        for url in others:
            with pytest.raises(StateStoreError) as err:
                open_keyed_store("p", "ns", max_entries=9, url=url)
            assert err.value.code == "INVALID_INPUT", url
            b = open_keyed_store("p", "ns", max_entries=5, url=url)
            try:
                b.register("k", 1)
                assert a.lookup("k") == 1
            finally:
                b.close()
        elsewhere = open_keyed_store("p", "ns", max_entries=9, url=f"redis://{parts.netloc}/{db}?prefix={prefix}x")
        elsewhere.close()  # another prefix is another keyspace: its own reopen check
    finally:
        a.close()


def test_one_redis_database_opened_with_other_options_is_invalid_input(url):
    a = open_keyed_store("p", "ns", max_entries=5, url=url)
    try:
        with pytest.raises(StateStoreError) as err:
            open_keyed_store("p", "other", max_entries=5, url=f"{url}&retries=7")
        assert (err.value.code, err.value.path) == ("INVALID_INPUT", a.location)
        assert "different settings" in str(err.value)
    finally:
        a.close()


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("redis://h/0", "redis://H:6379"),
        ("rediss://u:pw@h:6379/0?ssl_ca_certs=a&db=0", "rediss://u:pw@h/?db=0&ssl_ca_certs=a"),
        ("redis+sentinel://a:1,b:2/m?db=0", "redis+sentinel://B:2,a:1,a:1/m/0"),
        ("redis+cluster://a:1,b:2?prefix=p", "redis+cluster://b:2,a:1/?prefix=p&retries=3"),
        ("unix:///tmp/r.sock", "unix:///tmp/r.sock?db=0"),
    ],
)
def test_the_spellings_of_one_redis_database_name_it_once(one, other):
    assert database_of(one) == database_of(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("redis://h/0", "redis://h/1"),
        ("redis://h/0", "redis://h:6380/0"),
        ("redis://h/0", "rediss://h/0"),
        ("redis://h/0", "redis://h/0?prefix=q"),
        ("redis+sentinel://a:1/m", "redis+sentinel://a:1/n"),
        ("redis+cluster://a:1,b:2", "redis+cluster://a:1,c:2"),
        ("redis://u:pw@h/0", "redis://u:other@h/0"),  # another user's connection: that user's rights
    ],
)
def test_different_redis_databases_are_named_apart(one, other):
    assert database_of(one)[0] != database_of(other)[0]
    assert "pw" not in database_of(one)[0]

"""Redis run highly available, on real servers from the wheels: a Sentinel-managed primary that
fails over, Redis Cluster, an ACL user limited to the store's prefix, TLS, and what each says
when it is set up wrong."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_ha import SERVICE, ClusterGroup, SentinelGroup, TlsFront, make_certs, wait_until
from redis_support import free_port, with_prefix

from chatstate.state import KeyedStore, StateStoreError, commit_staged, open_keyed_store, probe, sweep_expired

DOCS = Path(__file__).resolve().parents[2] / "docs" / "state.md"
FAST = "retries=1&backoff_base_s=0.01&backoff_cap_s=0.05&socket_timeout_s=1"
FAILOVER_DEADLINE_S = 30.0


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "ha")
    group.start()
    yield group
    group.stop()


def write_until_it_lands(store: KeyedStore, key: str) -> float:
    """Write `key` until the store takes it; only UNAVAILABLE may come back meanwhile (never a
    wrong answer). Returns the seconds it took."""
    start = time.monotonic()
    while True:
        try:
            store.register(key, {"at": time.time()})
            return time.monotonic() - start
        except StateStoreError as exc:
            assert exc.code == "UNAVAILABLE", exc
            assert time.monotonic() - start < FAILOVER_DEADLINE_S, "never recovered"
            time.sleep(0.1)  # a failover is under way: the caller retries, as the gateway's replay does


# -- Sentinel -------------------------------------------------------------------------------
def test_acknowledged_writes_survive_a_sigkill_of_the_primary_and_the_store_follows(sentinels):
    url = sentinels.url(f"prefix=t&min_replicas_acked=1&{FAST}")
    with open_keyed_store("slack", "slack.events", max_entries=1_000, url=url) as store:
        for i in range(100):
            store.register(f"k{i}", {"i": i})  # each one acknowledged by the replica (WAIT)
        old = sentinels.primary.port
        sentinels.primary.stop(kill=True)
        wait_until(lambda: sentinels.master_port() != old, "a new primary")
        # The new primary has no replica until the old one comes back as one: with
        # min_replicas_acked=1 a write is refused (UNAVAILABLE, naming the missing ack) meanwhile.
        with pytest.raises(StateStoreError) as err:
            store.register("unacked", 1)
        assert err.value.code == "UNAVAILABLE"
        # the sentinels may still be promoting (no healthy primary yet): refused all the same
        reasons = ("replicas acknowledged", "unreachable", "no healthy primary")
        assert any(reason in str(err.value) for reason in reasons), str(err.value)
        sentinels.primary.start()  # same port: the sentinels turn it into the new replica
        write_until_it_lands(store, "after")
        keys = {e.key for e in store.entries()}
        assert {f"k{i}" for i in range(100)} | {"after"} <= keys  # nothing acknowledged was lost
    assert sentinels.master_port() == sentinels.replica.port


def test_readonly_after_a_coordinated_failover_is_followed_not_reported(sentinels):
    url = sentinels.url(f"prefix=t&{FAST}")
    old = sentinels.primary
    with (
        open_keyed_store("discord", "discord.components", max_entries=100, url=url) as store,
        open_keyed_store("discord", "discord.components", max_entries=100, url=f"{old.url}?prefix=t") as pinned,
    ):
        store.register("before", 1)
        with redis.Redis(port=sentinels.sentinel_ports[0]) as s:
            s.execute_command("SENTINEL", "FAILOVER", SERVICE)
        wait_until(lambda: sentinels.master_port() != old.port, "the coordinated failover")
        with redis.Redis(port=old.port, decode_responses=True) as c:
            wait_until(lambda: c.info("replication")["role"] == "slave", "the old primary serving as a replica")
        # The sentinels closed every client of the demoted server (CLIENT KILL), so the store
        # asks them again anyway. A connection they could not close (an ACL that denies the
        # sentinels CLIENT KILL, a client that reconnected to the old address mid-switch) is
        # put back by hand: READONLY there means "not applied", the claim goes to the new
        # primary and wins exactly once.
        pool = store._backend._client.connection_pool
        stale = pool.make_connection()
        stale.connect_to(("127.0.0.1", old.port))
        pool._available_connections.append(stale)
        with redis.Redis(port=old.port, decode_responses=True) as c:
            refused = c.info("errorstats").get("errorstat_ERR", {"count": 0})["count"]
            assert store.register_if_absent("button", {"v": 1}) is True
            assert c.info("errorstats")["errorstat_ERR"]["count"] == refused + 1  # the script failed there once
        assert store.register_if_absent("button", {"v": 2}) is False
        assert store.lookup("button") == {"v": 1}
        # a plain URL naming the demoted server is told what is wrong, not "unreachable"
        with pytest.raises(StateStoreError) as err:
            pinned.register("x", 1)
        assert (err.value.code, err.value.operation) == ("WRITE_FAILED", "register")
        assert "READONLY" in str(err.value) and "redis+sentinel://" in str(err.value)


def test_sentinel_mistakes_are_named(sentinels):
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url=sentinels.url(f"prefix=t&{FAST}").replace(SERVICE, "nosuch"))
    assert err.value.code == "OPEN_FAILED"
    assert "'nosuch'" in str(err.value) and repr(SERVICE) in str(err.value)

    dead = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/{SERVICE}?{FAST}"
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url=dead)
    assert err.value.code == "UNAVAILABLE" and "no Sentinel answered" in str(err.value)

    sentinels.replica.stop()  # nobody to acknowledge: the write is applied but not promised
    url = sentinels.url(f"prefix=t&min_replicas_acked=1&replica_ack_timeout_ms=100&{FAST}")
    with open_keyed_store("p", "ns", max_entries=5, url=url) as store:
        with pytest.raises(StateStoreError) as err:
            store.register("k", 1)
        assert err.value.code == "UNAVAILABLE"
        assert "0 of 1 replicas acknowledged it within 100 ms" in str(err.value)

    for port in sentinels.sentinel_ports:  # sentinels that want a password of their own
        with redis.Redis(port=port) as sentinel:
            sentinel.execute_command("ACL", "SETUSER", "default", "resetpass", ">sentinel-pw")
    for given in ("", "&sentinel_password=wrong"):  # they answer, and refuse: not "no Sentinel answered"
        with pytest.raises(StateStoreError) as err:
            open_keyed_store("p", "ns", max_entries=1, url=sentinels.url(f"prefix=t&{FAST}{given}"))
        assert err.value.code == "OPEN_FAILED" and "sentinel_password" in str(err.value), err.value
    with open_keyed_store(
        "p", "ns", max_entries=1, url=sentinels.url(f"prefix=t&{FAST}&sentinel_password=sentinel-pw")
    ):
        pass


def test_ssl_false_on_a_sentinel_url_means_plain_connections(sentinels):
    """redis-py takes the URL's `ssl` as text, and "false" is a true string: it spoke TLS to a plain server."""
    with open_keyed_store("p", "ns", max_entries=1, url=sentinels.url(f"prefix=t&ssl=false&{FAST}")) as store:
        store.register("k", 1)
        assert store.lookup("k") == 1


# -- Cluster --------------------------------------------------------------------------------
@contextlib.contextmanager
def two_plugins(url: str) -> Iterator[tuple[KeyedStore, KeyedStore, KeyedStore]]:
    """Two namespaces of the slack plugin and one of discord's, on `url`."""
    with (
        open_keyed_store("slack", "slack.events", max_entries=10, url=url) as events,
        open_keyed_store("slack", "slack.thread-participation", max_entries=10, url=url) as threads,
        open_keyed_store("discord", "discord.components", max_entries=10, url=url) as buttons,
    ):
        yield events, threads, buttons


def test_every_key_of_a_plugin_hashes_to_one_cluster_slot(cluster):
    url = cluster.url("prefix=slots")
    with two_plugins(url) as (a, b, c):
        for store in (a, b, c):
            store.register("{not-a-tag}:k", 1, ttl_ms=60_000)  # a brace in a key changes nothing
            assert store.register_if_absent("claim", 1) is True
            assert store.consume("claim") == 1
        with redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True) as raw:
            keys = list(raw.scan_iter(match="slots:p:*"))
            slots = {raw.keyslot(k) for k in keys if k.startswith("slots:p:{slack}")}
            assert len(slots) == 1 and {raw.keyslot(k) for k in keys} == slots | {raw.keyslot("{discord}")}
        assert sweep_expired(url=url) == 0


def test_a_staged_commit_runs_on_a_cluster_for_one_plugin_and_says_why_not_across_plugins(cluster):
    url = cluster.url("prefix=staged")
    with two_plugins(url) as (events, threads, buttons):
        commit_staged([events.stage_register("E1", {"done": True}), threads.stage_register("T1", {"agent": "a"})])
        assert (events.lookup("E1"), threads.lookup("T1")) == ({"done": True}, {"agent": "a"})
        with pytest.raises(StateStoreError) as err:
            commit_staged([events.stage_register("E2", 1), buttons.stage_register("B1", 1)])
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "commit")
        assert "discord, slack" in str(err.value) and "hash slot" in str(err.value)
        assert events.lookup("E2") is None and buttons.lookup("B1") is None  # nothing written
    assert sweep_expired(url=url) == 0  # the registry sweep walks was kept by the commit


def test_a_migrating_slot_is_unavailable_not_wrong(tmp_path):
    group = ClusterGroup(tmp_path / "cluster")
    group.start()
    try:
        url = group.url(f"prefix=mig&{FAST}")
        with open_keyed_store("mover", "ns", max_entries=10, url=url) as store:
            store.register("a", 1)
            raw = redis.cluster.RedisCluster(host="127.0.0.1", port=group.nodes[0].port, decode_responses=True)
            slot = raw.keyslot("{mover}")
            source = raw.get_node_from_key("{mover}")
            target = next(n for n in raw.get_primaries() if n.name != source.name)
            ids = {n.name: raw.cluster_myid(n) for n in (source, target)}
            order = "mig:p:{mover}:n:ns:order"
            with (
                redis.Redis(port=target.port, single_connection_client=True) as t,
                redis.Redis(port=source.port) as s,
            ):
                t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.name])
                s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.name])
                s.execute_command("MIGRATE", "127.0.0.1", target.port, order, 0, 5000)
                with pytest.raises(StateStoreError) as err:
                    store.register("b", 2)  # the namespace is half on each node
                assert err.value.code == "UNAVAILABLE" and "slot" in str(err.value)
                s.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")  # the move is called off:
                t.execute_command("ASKING")  # the key goes back
                t.execute_command("MIGRATE", "127.0.0.1", source.port, order, 0, 5000)
                t.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            raw.close()
            store.register("b", 2)
            assert [e.key for e in store.entries()] == ["a", "b"]
    finally:
        group.stop()


def test_a_cluster_nobody_answers_is_unavailable():
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url=f"redis+cluster://u:pw@127.0.0.1:{free_port()}?{FAST}")
    assert err.value.code == "UNAVAILABLE" and "reachable node" in str(err.value)
    assert "u:***@" in str(err.value) and ":pw@" not in str(err.value)


def test_replica_acks_are_refused_on_a_cluster_url(cluster):
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url=cluster.url("min_replicas_acked=1"))
    assert err.value.code == "INVALID_INPUT" and "min-replicas-to-write" in str(err.value)


def test_ssl_false_on_a_cluster_url_means_plain_connections(cluster):
    with open_keyed_store("p", "ns", max_entries=1, url=cluster.url(f"prefix=t&ssl=false&{FAST}")) as store:
        store.register("k", 1)
        assert store.lookup("k") == 1


# -- ACL ------------------------------------------------------------------------------------
def documented_acl_line() -> str:
    (line,) = re.findall(r"^ACL SETUSER .*$", DOCS.read_text(), flags=re.M)
    return line


def test_the_documented_acl_user_runs_every_operation(own_redis):
    with redis.Redis(port=own_redis.port) as admin:
        admin.execute_command(*documented_acl_line().replace(">PASSWORD", ">s3cret").split())
        url = f"redis://chatstate:s3cret@127.0.0.1:{own_redis.port}/0"
        with open_keyed_store("slack", "slack.events", max_entries=2, url=url) as store:
            store.register("a", 1, ttl_ms=1)
            assert store.register_if_absent("b", 2) is True and store.consume("b") == 2
            for k in "cde":
                store.register(k, 1)  # over max_entries: evicts
            entry = store.lookup_entry("e")
            assert store.compare_and_set("e", 2, version=entry.version) is True
            assert store.delete_if("e", version=store.lookup_entry("e").version) is True
            assert store.lookup_many(["d"]) == {"d": 1} and store.count() == 1
            assert [e.key for e in store.entries()] == ["d"] and store.clear() == 1
        sweep_expired(url=url)
        assert probe(url=url)["ok"] is True
        assert admin.execute_command("ACL", "LOG") == [] or all(
            e[b"object"] == b"client" for e in admin.execute_command("ACL", "LOG")
        )  # redis-py's optional CLIENT SETINFO is the only refusal


def test_a_missing_acl_permission_is_named(own_redis):
    with redis.Redis(port=own_redis.port) as admin:
        line = documented_acl_line().replace(">PASSWORD", ">s3cret")
        admin.execute_command(*line.replace(" +zadd", "").split())
        url = f"redis://chatstate:s3cret@127.0.0.1:{own_redis.port}/0"
        with open_keyed_store("slack", "slack.events", max_entries=2, url=url) as store:
            with pytest.raises(StateStoreError) as err:
                store.register("a", 1)
        assert err.value.code == "WRITE_FAILED"
        assert "NOPERM" in str(err.value) and "zadd" in str(err.value)
        admin.execute_command(*line.replace(" +evalsha", "").replace(" +eval ", " ").split())
        with pytest.raises(StateStoreError) as err:
            open_keyed_store("slack", "slack.events", max_entries=2, url=url).register("a", 1)
        assert "NOPERM" in str(err.value) and "eval" in str(err.value)
        with pytest.raises(StateStoreError) as err:
            open_keyed_store("slack", "x", max_entries=2, url=url.replace("s3cret", "wrong"))
        assert err.value.code == "OPEN_FAILED" and "credentials" in str(err.value)
        assert "wrong" not in str(err.value) and "chatstate:***@" in str(err.value)


def test_a_refused_read_is_read_failed_whichever_read_it_is(own_redis):
    """The reads that run a script (lookup_many, count, entries) fail as reads, as on SQLite."""
    with redis.Redis(port=own_redis.port) as admin:
        line = documented_acl_line().replace(">PASSWORD", ">s3cret")
        admin.execute_command(*line.replace(" +evalsha", "").replace(" +eval ", " ").split())
        url = f"redis://chatstate:s3cret@127.0.0.1:{own_redis.port}/0"
        with open_keyed_store("slack", "slack.events", max_entries=2, url=url) as store:
            for read in (lambda: store.lookup_many(["a"]), store.count, store.entries):
                with pytest.raises(StateStoreError) as err:
                    read()
                assert err.value.code == "READ_FAILED" and "NOPERM" in str(err.value), err.value


def test_a_prefix_outside_the_users_key_pattern_is_named_with_the_fix(own_redis):
    with redis.Redis(port=own_redis.port) as admin:
        admin.execute_command(*documented_acl_line().replace(">PASSWORD", ">s3cret").split())
    url = f"redis://chatstate:s3cret@127.0.0.1:{own_redis.port}/0?prefix=other&{FAST}"
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("slack", "slack.events", max_entries=2, url=url)
    assert err.value.code == "OPEN_FAILED"
    message = str(err.value).split("[")[0]
    assert "NOPERM" in message and "~other:*" in message, message
    assert "grant the user the commands" not in message  # the commands are all there: the keys are not


def test_the_documented_acl_user_works_on_a_cluster_with_the_documented_extras(cluster):
    extras = re.findall(r"A Cluster user also needs `([^`]+)`", " ".join(DOCS.read_text().split()))[0]
    line = documented_acl_line().replace("chatstate ", "cluster_user ", 1).replace(">PASSWORD", ">s3cret")
    url = cluster.url("prefix=chatstate").replace("redis+cluster://", "redis+cluster://cluster_user:s3cret@")
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as admin:
            admin.execute_command(*line.split())
    with pytest.raises(StateStoreError) as err:  # without the extras redis-py cannot read the slot map
        open_keyed_store("slack", "slack.events", max_entries=5, url=url)
    assert "CLUSTER SLOTS" in str(err.value)
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as admin:
            admin.execute_command(*f"{line} {extras}".split())
    with open_keyed_store("slack", "slack.events", max_entries=5, url=url) as store:
        assert store.register_if_absent("E1", 1) is True and store.consume("E1") == 1
    assert probe(url=url)["ok"] is True


# -- TLS ------------------------------------------------------------------------------------
@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    return make_certs(tmp_path / "certs")


@pytest.fixture
def tls_front(redis_url: str, certs: dict[str, Path]) -> Iterator[TlsFront]:
    front = TlsFront(int(redis_url.rsplit(":", 1)[1].split("/")[0]), certs)
    yield front
    front.close()


def tls_url(port: int, ca: Path, certs: dict[str, Path]) -> str:
    return (
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_certfile={certs['client_crt']}"
        f"&ssl_keyfile={certs['client_key']}&prefix=t{uuid.uuid4().hex[:8]}&{FAST}"
    )


def test_rediss_with_a_ca_file_and_a_client_certificate_works(tls_front, certs):
    with open_keyed_store("p", "ns", max_entries=5, url=tls_url(tls_front.port, certs["ca_crt"], certs)) as store:
        store.register("k", {"over": "tls"})
        assert store.consume("k") == {"over": "tls"}


def test_a_certificate_failure_is_named_not_called_unreachable(tls_front, certs):
    url = tls_url(tls_front.port, certs["other_ca_crt"], certs)  # a CA that did not sign the server
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=5, url=url)
    assert err.value.code == "OPEN_FAILED"
    message = str(err.value).split("[")[0]  # the text before the location
    assert "certificate" in message and "verif" in message, message
    assert f"127.0.0.1:{tls_front.port}" in str(err.value)  # host and port, in the location
    unreachable = tls_url(free_port(), certs["ca_crt"], certs)
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=5, url=unreachable)
    assert err.value.code == "UNAVAILABLE" and "TLS" not in str(err.value).split("[")[0]


def test_tls_set_up_wrong_is_named_not_called_unreachable(tls_front, certs, redis_url):
    plain_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    ca, prefix = certs["ca_crt"], f"prefix=t{uuid.uuid4().hex[:8]}&{FAST}"

    def refusal(url: str) -> tuple[str, str]:
        with pytest.raises(StateStoreError) as err:
            open_keyed_store("p", "ns", max_entries=5, url=url)
        return str(err.value.code), str(err.value).split("[")[0]

    code, message = refusal(f"rediss://127.0.0.1:{plain_port}/0?ssl_ca_certs={ca}&{prefix}")  # a plain port
    assert "TLS" in message and "redis://" in message, message
    code, message = refusal(f"rediss://127.0.0.1:{tls_front.port}/0?ssl_ca_certs={ca}.missing&{prefix}")
    assert code == "OPEN_FAILED" and "TLS" in message and "ssl_ca_certs" in message, message
    code, message = refusal(f"rediss://127.0.0.1:{tls_front.port}/0?ssl_ca_certs={ca}&{prefix}")  # no client cert
    assert "TLS" in message and "ssl_certfile" in message, message
    code, message = refusal(f"redis://127.0.0.1:{tls_front.port}/0?{prefix}")  # plain text to a TLS port
    assert "rediss://" in message, message


def test_an_unknown_scheme_names_the_forms_that_work(redis_url):
    with pytest.raises(StateStoreError) as err:
        open_keyed_store(
            "p", "ns", max_entries=1, url=with_prefix(redis_url, "t").replace("redis://", "redis+sentinal://")
        )
    assert err.value.code == "INVALID_INPUT"
    assert "redis+sentinel://" in str(err.value) and "redis+cluster://" in str(err.value)

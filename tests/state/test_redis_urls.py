"""The Redis URL forms docs/state.md lists, opened as an operator writes them: `unix://` to a real
server's socket, and an option nobody knows named (on every form, a cluster included)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_ha import ClusterGroup
from redis_support import RedisServer, with_prefix

from chatstate.state import StateStoreError, open_keyed_store, probe
from chatstate.state._redis import check_url


@pytest.fixture
def unix_socket() -> Iterator[Path]:
    """A real server listening on a socket only (port 0): a short folder, a socket path has ~100 bytes."""
    with tempfile.TemporaryDirectory(prefix="cs-") as folder:
        sock = Path(folder) / "redis.sock"
        server = RedisServer(Path(folder), extra=["--unixsocket", str(sock), "--unixsocketperm", "700"])
        server.start()  # its readiness PING goes to the TCP port it also listens on
        try:
            yield sock
        finally:
            server.stop()


def test_a_unix_socket_url_opens_and_keeps_the_contract(unix_socket):
    url = f"unix://{unix_socket}?prefix=t&db=1"
    with open_keyed_store("p", "ns", max_entries=1, url=url) as store:
        store.register("a", {"v": 1})
        store.register("b", {"v": 2})  # evicts a
        assert (store.lookup("a"), store.lookup("b"), store.location) == (None, {"v": 2}, url)
    assert probe(url=url)["ok"] is True


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_an_unknown_option_is_invalid_input_naming_it(kind, redis_url, cluster: ClusterGroup):
    url = with_prefix(redis_url, "t") if kind == "redis" else cluster.url("prefix=t")
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url=f"{url}&prefx=typo")  # a typo of prefix
    assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "open")
    assert "neither we nor redis-py know: prefx;" in str(err.value)
    with open_keyed_store("p", "ns", max_entries=1, url=f"{url}&socket_keepalive=true") as store:  # redis-py's own
        store.register("k", 1)


@pytest.mark.parametrize(("where", "refused"), [("/3", True), ("?db=2&", True), ("/0", False), ("?db=0&", False)])
def test_a_cluster_url_naming_a_database_other_than_0_is_refused(where, refused, cluster: ClusterGroup):
    """A cluster has database 0 only: a /3 was dropped silently, and the rows went to 0."""
    url = cluster.url().rstrip("/") + (where if where.startswith("?") else f"{where}?") + "prefix=t"
    if refused:
        with pytest.raises(StateStoreError) as err:
            open_keyed_store("p", "ns", max_entries=1, url=url)
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "open") and "one database" in str(err.value)
    else:
        with open_keyed_store("p", "ns", max_entries=1, url=url) as store:
            store.register("k", 1)


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("retries=abc", "'retries' is malformed: it takes a whole number"),
        ("retries=-1", "retries must be >= 0"),
        ("op_result_ttl_ms=0&expiry_grace_ms=-5", "expiry_grace_ms must be >= 0; op_result_ttl_ms must be >= 1"),
    ],
)
def test_a_bad_option_of_ours_is_named_with_its_range_and_the_url(query, said):
    url = f"redis://u:pw@127.0.0.1:1/0?{query}"  # refused before any connection
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, url=url)
    assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "open") and said in str(err.value)
    assert err.value.path == url.replace(":pw@", ":***@")  # which URL, its password hidden


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis://127.0.0.1:1/0?socket_keepalve=1", "know: socket_keepalve; did you mean socket_keepalive?"),
        ("rediss://127.0.0.1:1/0?ssl_cert_reqs=requierd", "Invalid SSL Certificate Requirements Flag: requierd"),
        ("redis://127.0.0.1:1/0?protocol=5", "protocol must be either 2 or 3"),
        ("redis://127.0.0.1:1/0?ssl_cert_reqs=required", "ssl_cert_reqs; TLS options need rediss://"),
        ("redis+sentinel://127.0.0.1:1/mymaster?ssl=true&ssl_cert_reqs=requierd", "Requirements Flag: requierd"),
        ("redis+cluster://127.0.0.1:1?read_from_replica=true", "did you mean read_from_replicas?"),
    ],
)
def test_an_option_redis_py_refuses_is_invalid_input_before_any_connection(url, said):
    """Nothing listens on port 1: an option redis-py refuses only at its first connection (a value, or on a
    cluster a name it drops) was UNAVAILABLE after retries, or never said; `check_url` is what the gateway's
    `start --check-only` and `restart` run too."""
    for check in (lambda: open_keyed_store("p", "ns", max_entries=1, url=url), lambda: check_url(url, "shown")):
        with pytest.raises(StateStoreError) as err:
            check()
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "open") and said in str(err.value)
    assert check_url("rediss://127.0.0.1:1/0?ssl_cert_reqs=required&socket_keepalive=true")[0][3] == []  # fine


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis+sentinel://127.0.0.1:1", "names the service after the hosts: redis+sentinel://host:26379/mymaster"),
        ("redis+cluster://127.0.0.1:1/2", "a Redis Cluster has one database (0): drop the /db from the URL"),
        ("redis+cluster://127.0.0.1:1?db=3", "a Redis Cluster has one database (0)"),
        ("redis+cluster://127.0.0.1:1?min_replicas_acked=1", "min_replicas_acked is for redis:// and redis+sentinel"),
    ],
)
def test_a_sentinel_or_cluster_url_that_cannot_work_is_refused_offline(url, said):
    """`start --check-only` and `restart` check the URL with `check_url` before anything stops: what opening
    the store would refuse, it refuses too (nothing listens on port 1)."""
    with pytest.raises(StateStoreError) as err:
        check_url(url, "shown")
    assert (err.value.code, err.value.operation, err.value.path) == ("INVALID_INPUT", "open", "shown")
    assert said in str(err.value)

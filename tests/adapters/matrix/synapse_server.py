"""A private Synapse for one test session: free loopback port, SQLite, every file under the
session's tmp dir, users registered with the shared secret, stopped at the end.

The generated config keeps what the tests rely on from a production server (room version 12,
the /sync response cache, txn dedupe per device) and sets rate limits so that the bot's sends
are throttled with real `M_LIMIT_EXCEEDED` + `retry_after_ms` answers once a test lowers the
bot's own limit (`override_ratelimit`, admin API), while logins, joins, invites and the test
users' messages are not throttled (each test logs in a fresh bot device and creates rooms).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER_NAME = "synapse.test"
START_DEADLINE_S = 60.0  # a cold start creates the SQLite schema (~2 s here)
STOP_TIMEOUT_S = 15.0
BOT_MESSAGES_PER_S = 20.0  # the default rc_message: what the bot gets unless a test lowers it
BOT_BURST = 50
UNLIMITED = {"per_second": 10_000, "burst_count": 10_000}
USERS = ("chatstate-bot", "alice", "bob", "mallory")  # alice is the server admin
PASSWORD = "pw-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Account:
    user_id: str
    access_token: str
    device_id: str


class SynapseServer:
    """One `python -m synapse.app.homeserver` process and the admin calls the fixtures need."""

    def __init__(self, workdir: Path, python: str) -> None:
        self.workdir = workdir
        self.python = python
        self.port = free_port()
        self.secret = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.accounts: dict[str, Account] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "synapse.log"

    def config(self) -> dict[str, Any]:
        data = self.workdir / "data"
        return {
            "server_name": SERVER_NAME,
            "pid_file": str(data / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(data / "homeserver.db")}},
            "log_config": None,  # INFO lines to stderr, which we send to synapse.log
            "media_store_path": str(data / "media"),
            "signing_key_path": str(data / "signing.key"),
            "registration_shared_secret": self.secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "report_stats": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "enable_metrics": False,
            "default_room_version": "12",
            "rc_message": {"per_second": BOT_MESSAGES_PER_S, "burst_count": BOT_BURST},
            "rc_registration": UNLIMITED,
            "rc_login": {"address": UNLIMITED, "account": UNLIMITED, "failed_attempts": UNLIMITED},
            "rc_joins": {"local": UNLIMITED, "remote": UNLIMITED},
            "rc_joins_per_room": UNLIMITED,
            "rc_invites": {"per_room": UNLIMITED, "per_user": UNLIMITED, "per_issuer": UNLIMITED},
            "rc_admin_redaction": UNLIMITED,
            "rc_room_creation": UNLIMITED,
        }

    def start(self) -> None:
        """Write the config and the signing key, start, wait for /versions, register users.

        Raises RuntimeError with the log tail when Synapse exits or never answers.
        """
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "homeserver.yaml"
        cfg.write_text(json.dumps(self.config(), indent=1))  # JSON is YAML
        # The signing key `--generate-keys` would write, written here: that command is one more
        # cold start of Synapse. Its format: "ed25519 <key id> <unpadded base64 of the seed>".
        seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        (self.workdir / "data" / "signing.key").write_text(f"ed25519 a_{secrets.token_hex(2)} {seed}\n")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "synapse.app.homeserver", "-c", str(cfg)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while True:  # Synapse has no readiness pipe: poll its first endpoint, bounded
            if self.proc.poll() is not None:
                raise RuntimeError(f"Synapse exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.call("GET", "/_matrix/client/versions")
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Synapse not ready after {START_DEADLINE_S}s:\n{self.log_tail()}") from None
                time.sleep(0.1)
        for name in USERS:
            self.accounts[name] = self.register(name, admin=name == "alice")
        for name in ("alice", "bob", "mallory"):  # people are never throttled; only the bot is
            self.override_ratelimit(self.accounts[name].user_id, messages_per_second=0, burst_count=0)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    # -- admin calls (blocking; used at session start) -----------------------------------------
    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> dict[str, Any]:
        """One client-server call. Raises RuntimeError with the errcode for a non-2xx answer."""
        req = urllib.request.Request(
            self.base_url + path, method=method, data=None if body is None else json.dumps(body).encode()
        )
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None

    def register(self, localpart: str, *, admin: bool) -> Account:
        """Register with the shared secret (Synapse admin API, HMAC-SHA1 over the fields)."""
        nonce = self.call("GET", "/_synapse/admin/v1/register")["nonce"]
        kind = "admin" if admin else "notadmin"
        mac = hmac.new(
            self.secret.encode(), b"\x00".join(p.encode() for p in (nonce, localpart, PASSWORD, kind)), hashlib.sha1
        )
        body = {"nonce": nonce, "username": localpart, "password": PASSWORD, "admin": admin, "mac": mac.hexdigest()}
        out = self.call("POST", "/_synapse/admin/v1/register", body)
        return Account(out["user_id"], out["access_token"], out["device_id"])

    def override_ratelimit(self, user_id: str, *, messages_per_second: float, burst_count: int) -> None:
        """Set `user_id`'s message rate limit (0/0 = unlimited) through the admin API."""
        self.call(
            "POST",
            f"/_synapse/admin/v1/users/{user_id}/override_ratelimit",
            {"messages_per_second": messages_per_second, "burst_count": burst_count},
            token=self.accounts["alice"].access_token,
        )

    def reset_ratelimit(self, user_id: str) -> None:
        self.call(
            "DELETE",
            f"/_synapse/admin/v1/users/{user_id}/override_ratelimit",
            token=self.accounts["alice"].access_token,
        )

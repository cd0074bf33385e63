"""Exit codes of the `gateway` command (documented in docs/gateway.md) and the one exception
that carries a code from deep inside startup up to `main`."""

from __future__ import annotations

OK = 0  # started and stopped cleanly, or the command did what it was asked
FAILED = 1  # unexpected error; the log says what
BAD_CONFIG = 2  # bad usage or configuration; the message names the key and why
STORE_UNUSABLE = 3  # the state store cannot be used (not SQLite, corrupt, newer schema)
IN_USE = 4  # the port is taken or a gateway already runs on this state dir
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

# StateStoreError codes that mean "this database cannot be used as it is": the gateway refuses
# to start (exit 3) and never touches the file.
UNUSABLE_STORE_CODES = frozenset({"OPEN_FAILED", "CORRUPT", "SCHEMA_UNSUPPORTED", "UNAVAILABLE"})


class GatewayExit(Exception):
    """Stop the command with `code`; `main` prints the message (if any) to stderr."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code


class ConfigError(GatewayExit):
    """Bad configuration: names the offending key (dotted, as in the TOML file) and why."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(BAD_CONFIG, f"config error: {key}: {why}")
        self.key = key
        self.why = why

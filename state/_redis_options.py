"""The Redis URL: redis-py's part, our options (`?prefix=...&retries=...`), and a location
without credentials for messages."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._errors import StateStoreError


@dataclass(frozen=True)
class RedisOptions:
    """Redis-only knobs, read from the URL query (`?prefix=...&retries=...`)."""

    prefix: str = "chatstate"  # every key starts with "{prefix}:"; one prefix per project
    retries: int = 3  # extra attempts after a connection error, then UNAVAILABLE
    backoff_base_s: float = 0.05  # first retry waits this long, doubling each time ...
    backoff_cap_s: float = 0.5  # ... up to this
    socket_connect_timeout_s: float = 1.0
    socket_timeout_s: float = 5.0
    expiry_grace_ms: int = 60_000  # server-side cleanup runs this long after client-side expiry
    op_result_ttl_ms: int = 60_000  # how long a claim/take result is kept for a retried call

    @classmethod
    def from_query(cls, query: dict[str, str]) -> RedisOptions:
        """Raises INVALID_INPUT for an unknown option or a malformed number."""
        kinds = {name: type(value) for name, value in cls().__dict__.items()}
        values: dict[str, object] = {}
        for name, text in query.items():
            if name not in kinds:
                raise StateStoreError("INVALID_INPUT", "open", f"unknown Redis URL option {name!r}")
            try:
                values[name] = kinds[name](text)
            except ValueError:
                raise StateStoreError("INVALID_INPUT", "open", f"Redis URL option {name!r} is malformed") from None
        options = cls(**values)  # type: ignore[arg-type]
        if not options.prefix or any(c in options.prefix for c in "{} \n"):
            raise StateStoreError("INVALID_INPUT", "open", "Redis URL option 'prefix' must be a non-empty word")
        if options.retries < 0 or options.expiry_grace_ms < 0 or options.op_result_ttl_ms < 1:
            raise StateStoreError("INVALID_INPUT", "open", "Redis URL options must not be negative")
        return options


def split_url(url: str) -> tuple[str, RedisOptions, str]:
    """Return (url for redis-py, our options, location without credentials)."""
    parts = urlsplit(url)
    ours = {f for f in RedisOptions.__dataclass_fields__}
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = RedisOptions.from_query({k: v for k, v in query if k in ours})
    theirs = [(k, v) for k, v in query if k not in ours]
    client_url = urlunsplit(parts._replace(query=urlencode(theirs)))
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    shown = [(k, v) for k, v in query if k not in ("password", "username")]
    location = urlunsplit(parts._replace(netloc=netloc, query=urlencode(shown), fragment=""))
    return client_url, options, location

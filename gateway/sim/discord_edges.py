"""Discord's edge behaviours as the simulator plays them, apart from the simulator's
REST and interaction plumbing: the switches (`DiscordEdges`, all off by default, all at once with
`DiscordEdges.hostile()`), the per-route rate-limit buckets, and the interaction-token rules.

The 3-second initial-response deadline (a late answer is discarded, the user sees "This
interaction failed", the token is dead: 10062), interaction tokens that expire (15 min,
compressible: 50027), a second initial response (40060), per-route rate-limit buckets with
`X-RateLimit-*` headers and 429 + JSON `retry_after`, slow message creation, and double clicks.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

RESPONSE_DEADLINE_S = 3.0  # the initial response must arrive within this
TOKEN_TTL_S = 15 * 60  # an interaction token works for follow-ups this long
UNKNOWN_INTERACTION = 10062
INVALID_WEBHOOK_TOKEN = 50027
ALREADY_ACKNOWLEDGED = 40060


@dataclass(frozen=True)
class DiscordEdges:
    """Which of Discord's edge behaviours the simulator plays (all off by default)."""

    deadline: bool = False  # an initial response later than deadline_s fails the interaction
    deadline_s: float = RESPONSE_DEADLINE_S
    token_ttl_s: float = TOKEN_TTL_S  # follow-ups after this get 401 / 50027
    rate_limits: bool = False  # per-route buckets: bucket_size calls per bucket_window_s, then 429
    bucket_size: int = 2
    bucket_window_s: float = 1.0
    slow_messages_s: float = 0.0  # message creation takes this long
    double_click: bool = False  # every click arrives twice within milliseconds
    already_acknowledged: bool = False  # webhook calls answer 40060 (another responder was first)

    @classmethod
    def hostile(cls) -> DiscordEdges:
        """Every switch on that a working bot must survive (not `already_acknowledged`, which
        only a misbehaving second responder causes): the demo's `--hostile` profile."""
        return cls(deadline=True, rate_limits=True, slow_messages_s=2.5, double_click=True)


@dataclass
class Bucket:
    """One rate-limit bucket: calls in the current window."""

    window_start: float = 0.0
    used: int = 0


@dataclass
class Token:
    """What Discord knows about one interaction token."""

    interaction_id: str
    created: float
    acknowledged: bool = False
    failed: bool = False
    messages: list[str] = field(default_factory=list)


def hashlib_name(route: str) -> str:
    """An opaque bucket id for `route`, as Discord's X-RateLimit-Bucket is."""
    return hashlib.sha1(route.encode()).hexdigest()[:16]


class RateLimiter:
    """Discord's per-route buckets: `bucket_size` calls per `bucket_window_s`, then 429."""

    def __init__(self, hit: Callable[[str], None]) -> None:
        self._hit = hit
        self._buckets: dict[str, Bucket] = {}

    def account(self, route: str, edges: DiscordEdges) -> tuple[web.Response | None, dict[str, str]]:
        """Account one call to `route`'s bucket: (a 429 to send, or None) and the headers."""
        if not edges.rate_limits:
            return None, {}
        now = time.monotonic()
        bucket = self._buckets.setdefault(route, Bucket(now))
        if now - bucket.window_start >= edges.bucket_window_s:
            bucket.window_start, bucket.used = now, 0
        reset_after = round(bucket.window_start + edges.bucket_window_s - now, 3)
        headers = {
            "X-RateLimit-Limit": str(edges.bucket_size),
            "X-RateLimit-Bucket": hashlib_name(route),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        }
        if bucket.used >= edges.bucket_size:
            self._hit("rate_limited")
            headers.update(
                {"X-RateLimit-Remaining": "0", "X-RateLimit-Scope": "user", "Retry-After": str(math.ceil(reset_after))}
            )
            body = {"message": "You are being rate limited.", "retry_after": reset_after, "global": False}
            return web.json_response(body, status=429, headers=headers), headers
        bucket.used += 1
        headers["X-RateLimit-Remaining"] = str(edges.bucket_size - bucket.used)
        return None, headers


def check_token(
    tokens: dict[str, Token], token: str, edges: DiscordEdges, hit: Callable[[str], None]
) -> tuple[Token | None, web.Response | None]:
    """Whether the webhook may use `token`: (its state, None) or (None, the refusal to send)."""
    state = tokens.get(token)
    if state is None or state.failed or not state.acknowledged:
        hit("unknown_interaction")
        return None, web.json_response({"message": "Unknown interaction", "code": UNKNOWN_INTERACTION}, status=404)
    if time.monotonic() - state.created > edges.token_ttl_s:
        hit("token_expired")
        return None, web.json_response({"message": "Invalid Webhook Token", "code": INVALID_WEBHOOK_TOKEN}, status=401)
    if edges.already_acknowledged:
        hit("already_acknowledged")
        return None, web.json_response(
            {"message": "Interaction has already been acknowledged.", "code": ALREADY_ACKNOWLEDGED}, status=400
        )
    return state, None

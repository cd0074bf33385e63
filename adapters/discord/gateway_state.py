"""What the Discord Gateway transport keeps, next to the registries of `state.py`.

| namespace                      | key                  | value                                          | ttl / max      |
|--------------------------------|----------------------|------------------------------------------------|----------------|
| `discord.gateway-session`      | `shard:{id}/{count}` | `{session_id, resume_gateway_url, seq, saved_at}` | none / 64   |
| `discord.gateway-session`      | `lease:{id}/{count}` | `{owner, at}` (which gateway holds the shard)  | lease_ms / 64  |

Why each exists:
- the session row lets a restarted gateway RESUME instead of IDENTIFY, so Discord replays what
  it dispatched while the gateway was down. `seq` is the highest sequence number whose dispatch
  and every earlier one are fully handled, so a replay never skips one still in hand; Discord
  decides how long a session stays resumable, so the row has no TTL of its own;
- the shard lease makes one gateway of several hold the shard's session at a time (Discord runs
  one session per shard; two would both get every event and fight over RESUME).
An INTERACTION_CREATE replayed after a RESUME meets the plugin's gate like an HTTP replay.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatstate.gateway.sdk import AdapterState, StateSpec, now_ms

SESSIONS = StateSpec("discord.gateway-session", ttl_ms=None, max_entries=64)


@dataclass(frozen=True)
class SavedSession:
    """Where a RESUME goes and from which sequence number."""

    session_id: str
    resume_gateway_url: str
    seq: int


class GatewayState:
    """The session row and the shard lease of one shard."""

    def __init__(self, *, legacy: bool, shard: tuple[int, int], owner: str) -> None:
        self.sessions = AdapterState(SESSIONS, legacy=legacy)
        self.owner = owner
        self._session_key = f"shard:{shard[0]}/{shard[1]}"
        self._lease_key = f"lease:{shard[0]}/{shard[1]}"

    # -- the session ------------------------------------------------------------------------
    async def load(self) -> SavedSession | None:
        """The saved session, read from the store (another gateway may have written it since)."""
        self.sessions.memory.drop(self._session_key)
        value = await self.sessions.get(self._session_key)
        if not isinstance(value, dict):
            return None
        try:
            return SavedSession(str(value["session_id"]), str(value["resume_gateway_url"]), int(value["seq"]))
        except (KeyError, TypeError, ValueError):
            return None  # a row of another shape: IDENTIFY afresh

    async def save(self, session: SavedSession) -> None:
        """Durable on return (a SIGKILL right after still RESUMEs from here)."""
        await self.sessions.record(
            self._session_key,
            {
                "session_id": session.session_id,
                "resume_gateway_url": session.resume_gateway_url,
                "seq": session.seq,
                "saved_at": now_ms(),
            },
        )

    async def drop(self) -> None:
        """Forget a session Discord invalidated."""
        await self.sessions.forget(self._session_key)

    # -- the shard lease --------------------------------------------------------------------
    async def take_lease(self, lease_ms: int) -> bool:
        """Hold the shard for `lease_ms` more: take it if free, renew it if ours.

        The renewal reads then writes; the store's compare-and-set (state core v2) will make it
        one step. Until then a holder renews every third of the lease, so it never lapses
        between the read and the write unless the process stalls for two thirds of a lease.
        """
        value = {"owner": self.owner, "at": now_ms()}
        if await self.sessions.claim(self._lease_key, value, ttl_ms=lease_ms):
            return True
        held = await self.sessions.get(self._lease_key)
        if isinstance(held, dict) and held.get("owner") == self.owner:
            await self.sessions.record(self._lease_key, value, ttl_ms=lease_ms)
            return True
        return False

    async def release_lease(self) -> None:
        held = await self.sessions.get(self._lease_key)
        if isinstance(held, dict) and held.get("owner") == self.owner:
            await self.sessions.forget(self._lease_key)

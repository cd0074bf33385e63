"""The state the Discord adapter keeps (DESIGN.md §3); `legacy=True` keeps it in memory only.

  namespace                key             value                                  ttl / max
  discord.components       custom_id       {version:1, entry}                     30 min / 500
  discord.modals           custom_id       {version:1, entry}                     30 min / 500
  discord.used             custom_id       {user_id, used_at}                     30 min / 500
  discord.interactions     interaction id  the gate's claim, then its done mark   15 min+ / 20,000
  discord.panel-owners     user id         sdk.UserQuota's counters               panel ttl / 5,000
  discord.gateway-session  shard:{id}/{n}  {session_id, resume_gateway_url, seq}  none / 64
                           lease:{id}/{n}  {owner, at}: the gateway holding it    lease / 64

The session row lets a restart RESUME, so Discord replays what it dispatched meanwhile; `seq` is
the highest sequence number whose dispatch, and every earlier one, is fully handled. The shard
lease makes one gateway of several hold the session (two would both get every event).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple, NotRequired, TypedDict

from chatstate.adapters.discord.platform import RESPONSE_DEADLINE_S
from chatstate.gateway.sdk import AdapterState, StateSpec, StateStoreError, Writes, now_ms

ENTRY_VERSION = 1  # bump when the entry shape changes; other versions read as expired
COMPONENTS = StateSpec("discord.components", ttl_ms=30 * 60 * 1000, max_entries=500)
MODALS = StateSpec("discord.modals", ttl_ms=30 * 60 * 1000, max_entries=500)
USED = StateSpec("discord.used", ttl_ms=30 * 60 * 1000, max_entries=500)
SESSIONS = StateSpec("discord.gateway-session", ttl_ms=None, max_entries=64)
INTERACTION_LEASE_MS = 15_000  # outlives Discord's 3 s answer window: a takeover is always too late
INTERACTIONS_MAX_ENTRIES = 20_000  # claimed ids kept: replays stay refused up to ~33 interactions/s
PANEL_OWNERS_MAX_ENTRIES = 5_000  # users counted; evicting one forgets their count
UNANSWERED_MS = int(RESPONSE_DEADLINE_S * 1000)  # a live click is answered by then (or deferred)
TOKEN_LIFETIME_MS = 15 * 60 * 1000  # a Gateway RESUME may replay an interaction while it lives


class ComponentEntry(TypedDict):
    """What a click on one custom_id may do."""

    component_type: int  # discord.ComponentType value the click must carry ("right kind")
    action: str  # what the bot does: refresh | approve | colour | feedback
    single_use: bool  # consumed by the first allowed click
    allowed_user_ids: list[str]  # empty = anyone
    modal_id: NotRequired[str]  # a button that answers with this modal


class ModalField(TypedDict):
    custom_id: str
    label: str
    style: str  # discord.TextStyle name: short | paragraph
    required: bool


class ModalEntry(TypedDict):
    """A modal the bot may show, and who may submit it (single-use: the submit consumes it)."""

    action: str
    title: str
    fields: list[ModalField]
    allowed_user_ids: list[str]


def wrap(entry: ComponentEntry | ModalEntry) -> dict[str, Any]:
    """The stored value: the entry under a version tag, so a later shape can tell old rows."""
    return {"version": ENTRY_VERSION, "entry": dict(entry)}


def unwrap(value: Any) -> Any | None:
    """The entry of a stored value, or None for a value of another version (read as expired)."""
    if isinstance(value, dict) and value.get("version") == ENTRY_VERSION and isinstance(value.get("entry"), dict):
        return value["entry"]
    return None


def interactions_spec(window_s: int) -> StateSpec:
    """The gate's claims. The done mark outlives both ways a delivery comes again: a signed HTTP
    replay (a timestamp up to one window old or ahead) and a Gateway replay (the token's life)."""
    ttl_ms = max(2 * window_s * 1000, TOKEN_LIFETIME_MS)
    return StateSpec("discord.interactions", ttl_ms=ttl_ms, max_entries=INTERACTIONS_MAX_ENTRIES)


def panel_owners_spec(panel_ttl_ms: int) -> StateSpec:
    """Live panels per user, so one user's `/panel` spam cannot push the registries past their
    cap and evict another user's buttons; a count lives as long as the panel's entries."""
    return StateSpec("discord.panel-owners", ttl_ms=panel_ttl_ms, max_entries=PANEL_OWNERS_MAX_ENTRIES)


class Registry:
    """The component and modal registries; every message with components goes through `register`."""

    def __init__(self, *, legacy: bool, ttl_ms: int | None = None, max_entries: int | None = None) -> None:
        self.states = self.components, self.modals, self.used = tuple(
            AdapterState(replace(s, ttl_ms=ttl_ms or s.ttl_ms, max_entries=max_entries or s.max_entries), legacy=legacy)
            for s in (COMPONENTS, MODALS, USED)  # opened, and shown in health, in this order
        )

    async def register(self, components: dict[str, ComponentEntry], modals: dict[str, ModalEntry]) -> None:
        """Record every entry of one message in one transaction before it is posted, not with
        the done mark: a SIGKILL right after the post must leave buttons that work."""
        writes = Writes()
        for custom_id, modal in modals.items():
            writes.put(self.modals, custom_id, wrap(modal))
        for custom_id, component in components.items():
            writes.put(self.components, custom_id, wrap(component))
        await writes.commit()

    async def forget(self, custom_ids: list[str]) -> None:
        """Drop the entries of a message that could not be sent (one transaction)."""
        writes = Writes()
        for custom_id in custom_ids:
            writes.delete(self.components, custom_id)
            writes.delete(self.modals, custom_id)
        await writes.commit()

    async def peek_component(self, custom_id: str) -> ComponentEntry | None:
        return unwrap(await self.components.get(custom_id))

    async def peek_modal(self, custom_id: str) -> ModalEntry | None:
        return unwrap(await self.modals.get(custom_id))

    async def claim_use(self, custom_id: str, user_id: str) -> bool:
        """Take the one use of a single-use component for `user_id`; False if someone has. Its
        own write before the answer, not staged with the done mark: racing clicks are different
        interactions, on one gateway or two, and a SIGKILL between the answer and the done mark
        must leave the use taken, else the retry approves again. `user_id`'s own use still held
        UNANSWERED_MS after it was taken was never answered (the done mark removes it): it is
        taken again, by compare-and-set, and the user is shown the outcome they missed."""
        use = {"user_id": user_id, "used_at": now_ms()}
        if await self.used.claim(custom_id, use):
            return True
        held = await self.used.get_entry(custom_id, fresh=True)
        old = held.value if held is not None and isinstance(held.value, dict) else {}
        unanswered = old.get("user_id") == user_id and use["used_at"] - old.get("used_at", 0) >= UNANSWERED_MS
        return held is not None and unanswered and await self.used.take_over(custom_id, use, version=held.version)

    async def used_by(self, custom_id: str) -> str | None:
        """The user who consumed `custom_id`, or None (never used, or the tombstone expired)."""
        value = await self.used.get(custom_id)
        return str(value["user_id"]) if isinstance(value, dict) and "user_id" in value else None

    async def take_modal(self, custom_id: str) -> ModalEntry | None:
        """Consume a modal on submit (atomic: of racing submits one wins); None if it was."""
        return unwrap(await self.modals.take(custom_id))


class SavedSession(NamedTuple):
    """Where a RESUME goes and from which sequence number."""

    session_id: str
    resume_gateway_url: str
    seq: int


class GatewayState:
    """The session row and the shard lease of one shard (the Gateway transport)."""

    def __init__(self, *, legacy: bool, shard: tuple[int, int], owner: str) -> None:
        self.sessions = AdapterState(SESSIONS, legacy=legacy)
        self.owner = owner
        self._session_key, self._lease_key = f"shard:{shard[0]}/{shard[1]}", f"lease:{shard[0]}/{shard[1]}"

    async def load(self) -> SavedSession | None:
        """The saved session, read from the store (another gateway may have written it since)."""
        try:
            value: Any = getattr(await self.sessions.get_entry(self._session_key, fresh=True), "value", None)
            return SavedSession(str(value["session_id"]), str(value["resume_gateway_url"]), int(value["seq"]))
        except (KeyError, TypeError, ValueError):
            return None  # none, or a row of another shape: IDENTIFY afresh

    async def save(self, session: SavedSession) -> None:
        """Durable on return (a SIGKILL right after still RESUMEs from here)."""
        await self.sessions.record(self._session_key, {**session._asdict(), "saved_at": now_ms()})

    async def drop(self) -> None:
        """Forget a session Discord invalidated."""
        await self.sessions.forget(self._session_key)

    async def take_lease(self, lease_ms: int) -> bool:
        """Hold the shard for `lease_ms` more: take it if free, renew it (compare-and-set on the
        version read, so a lapse taken by another gateway in between is not overwritten) if ours.
        False while a shared store fails over: each gateway's memory would say "mine"."""
        value, key = {"owner": self.owner, "at": now_ms()}, self._lease_key
        try:
            if await self.sessions.claim(key, value, ttl_ms=lease_ms):
                return True
            # the store's row (its version), or this process's own while the store is unreachable
            held = await self.sessions.get_entry(key, fresh=True) or self.sessions.memory.get(key)
            if held is None or not isinstance(held.value, dict) or held.value.get("owner") != self.owner:
                return False
            return await self.sessions.take_over(key, value, version=held.version, ttl_ms=lease_ms)
        except StateStoreError:
            return False

    async def release_lease(self) -> None:
        held = await self.sessions.get_entry(self._lease_key, fresh=True)
        if held is not None and isinstance(held.value, dict) and held.value.get("owner") == self.owner:
            await self.sessions.forget(self._lease_key)

"""The state the Discord adapter keeps: its component and modal registries (DESIGN.md §3).

| namespace            | key       | value                | ttl / max      |
|----------------------|-----------|----------------------|----------------|
| `discord.components` | custom_id | `{version:1, entry}` | 30 min / 500   |
| `discord.modals`     | custom_id | `{version:1, entry}` | 30 min / 500   |
| `discord.used`       | custom_id | `{user_id, used_at}` | 30 min / 500   |

| `discord.interactions` | interaction id | the gate's claim, then `{received_at, done_at}` | 15 min+ / 20,000 |
| `discord.panel-owners` | user id | `{b: {bucket: count}}` (`sdk.UserQuota`) | panel ttl / 5,000 |

A click is peeked (exists, right kind, user allowed) before anything is written, so a refused
user leaves the entry in place. A single-use component's one use is decided by `discord.used`
(register_if_absent names the user, atomic across processes): every later click is told
"already used" (by you, or by someone), never "expired", even after a crash right after the
claim. Consuming the component row, and the panel quota count, ride with the gate's done mark.
A modal submit takes the modal row (atomic read+delete): of racing submits exactly one wins.
`legacy=True` keeps the memory-only "before" for side-by-side demos.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NotRequired, TypedDict

from chatstate.gateway.sdk import AdapterState, StateSpec

ENTRY_VERSION = 1  # bump when the entry shape changes; other versions read as expired
COMPONENTS = StateSpec("discord.components", ttl_ms=30 * 60 * 1000, max_entries=500)
MODALS = StateSpec("discord.modals", ttl_ms=30 * 60 * 1000, max_entries=500)
USED = StateSpec("discord.used", ttl_ms=30 * 60 * 1000, max_entries=500)


class ComponentEntry(TypedDict):
    """What a click on one custom_id may do."""

    component_type: int  # discord.ComponentType value the click must carry ("right kind")
    action: str  # what the bot does: refresh | approve | color | feedback
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


class Registry:
    """The component and modal registries of one adapter instance; memory-only when `legacy`.

    `register` is the one recording function: every message with components goes through it."""

    def __init__(self, *, legacy: bool, ttl_ms: int | None = None, max_entries: int | None = None) -> None:
        def spec(base: StateSpec) -> StateSpec:
            return replace(
                base,
                ttl_ms=base.ttl_ms if ttl_ms is None else ttl_ms,
                max_entries=base.max_entries if max_entries is None else max_entries,
            )

        self.components = AdapterState(spec(COMPONENTS), legacy=legacy)
        self.modals = AdapterState(spec(MODALS), legacy=legacy)
        self.used = AdapterState(spec(USED), legacy=legacy)

    @property
    def states(self) -> tuple[AdapterState, ...]:
        """The three namespaces, in the order they open (and show in health)."""
        return (self.components, self.modals, self.used)

    # -- writes: awaited before the message that shows them counts as sent -----------------
    async def register(self, components: dict[str, ComponentEntry], modals: dict[str, ModalEntry]) -> None:
        """Record every entry of one message; modals first so no trigger points at nothing."""
        for custom_id, modal in modals.items():
            await self.modals.record(custom_id, wrap(modal))
        for custom_id, component in components.items():
            await self.components.record(custom_id, wrap(component))

    async def forget(self, custom_ids: list[str]) -> None:
        """Drop the entries of a message that could not be sent."""
        for custom_id in custom_ids:
            await self.components.forget(custom_id)
            await self.modals.forget(custom_id)

    # -- reads ------------------------------------------------------------------------------
    async def peek_component(self, custom_id: str) -> ComponentEntry | None:
        return unwrap(await self.components.get(custom_id))

    async def claim_use(self, custom_id: str, user_id: str, *, used_at: int) -> bool:
        """Take the one use of a single-use component for `user_id`; False if someone (maybe
        this user) already has. Atomic across processes; durable before it returns."""
        return await self.used.claim(custom_id, {"user_id": user_id, "used_at": used_at})

    async def used_by(self, custom_id: str) -> str | None:
        """The user who consumed `custom_id`, or None (never used, or the tombstone expired)."""
        value = await self.used.get(custom_id)
        return str(value["user_id"]) if isinstance(value, dict) and "user_id" in value else None

    async def peek_modal(self, custom_id: str) -> ModalEntry | None:
        return unwrap(await self.modals.get(custom_id))

    async def take_modal(self, custom_id: str) -> ModalEntry | None:
        """Consume a modal on submit; None when it was already submitted."""
        return unwrap(await self.modals.take(custom_id))


# -- exactly-once and fairness -----------------------------------------------------------------
INTERACTION_LEASE_MS = 15_000  # outlives Discord's 3 s answer window: a takeover is always too late
INTERACTIONS_MAX_ENTRIES = 20_000  # claimed ids kept: replays stay refused up to ~33 interactions/s
PANEL_OWNERS_MAX_ENTRIES = 5_000  # users counted (`sdk.UserQuota`); evicting one forgets their count


TOKEN_LIFETIME_MS = 15 * 60 * 1000  # a Gateway RESUME may replay an interaction while it lives


def interactions_spec(window_s: int) -> StateSpec:
    """`discord.interactions`, the gate's claims by interaction id. The done mark outlives both
    ways a delivery comes again: a signed HTTP replay (a timestamp may be up to one window old
    or ahead, so until two windows after it) and a Gateway replay (the token's lifetime)."""
    ttl_ms = max(2 * window_s * 1000, TOKEN_LIFETIME_MS)
    return StateSpec("discord.interactions", ttl_ms=ttl_ms, max_entries=INTERACTIONS_MAX_ENTRIES)


def panel_owners_spec(panel_ttl_ms: int) -> StateSpec:
    """`discord.panel-owners`: live panels per user, so one user's `/panel` spam cannot push the
    registries past their cap and evict another user's buttons. A panel lives as long as its
    registry entries."""
    return StateSpec("discord.panel-owners", ttl_ms=panel_ttl_ms, max_entries=PANEL_OWNERS_MAX_ENTRIES)

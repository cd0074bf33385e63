"""The bot's messages, built with discord.py's `discord.ui` and serialized by discord.py.

A panel is one message with four components: a reusable "Refresh" button, a single-use
"Approve" button, a reusable colour select, and a "Feedback" button that opens a modal. Each
custom_id is fresh (`<action>:<random>`), so the registry entry is the only thing that knows
what a click means; that is what must survive a restart. The modal is rebuilt from its
registry entry when the trigger is clicked, so it too works after a restart.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import discord

from chatstate.adapters.discord.state import ComponentEntry, ModalEntry, ModalField

COLOURS = ("red", "green", "blue")


def new_custom_id(action: str) -> str:
    """`<action>:<16 hex>`; well under Discord's 100-character custom_id limit."""
    return f"{action}:{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Panel:
    """A message ready to send, and the registry entries its components need."""

    content: str
    view: discord.ui.View
    components: dict[str, ComponentEntry]
    modals: dict[str, ModalEntry]

    @property
    def custom_ids(self) -> list[str]:
        return [*self.components, *self.modals]


def build_panel(*, allowed_user_ids: list[str]) -> Panel:
    """The demo panel; `allowed_user_ids` (empty = anyone) restricts every component of it."""
    allowed = list(allowed_user_ids)
    modal_id = new_custom_id("feedback-modal")
    modals: dict[str, ModalEntry] = {
        modal_id: ModalEntry(
            action="feedback",
            title="Feedback",
            fields=[ModalField(custom_id="comment", label="Comment", style="paragraph", required=True)],
            allowed_user_ids=allowed,
        )
    }
    view = discord.ui.View(timeout=None)  # no discord.py timeout: the registry TTL rules
    colours: discord.ui.Select[discord.ui.View] = discord.ui.Select(
        custom_id=new_custom_id("colour"), placeholder="Pick a colour",
        options=[discord.SelectOption(label=c.title(), value=c) for c in COLOURS],
    )
    items: list[tuple[discord.ui.Item[discord.ui.View], str, bool]] = [  # (item, action, single_use)
        (_button("Refresh", discord.ButtonStyle.secondary, "refresh"), "refresh", False),
        (_button("Approve", discord.ButtonStyle.success, "approve"), "approve", True),
        (colours, "colour", False),
        (_button("Feedback", discord.ButtonStyle.primary, "feedback"), "feedback", False),
    ]
    components: dict[str, ComponentEntry] = {}
    for item, action, single_use in items:
        view.add_item(item)
        custom_id = item.custom_id  # type: ignore[attr-defined]  # Button and Select both have one
        entry = ComponentEntry(component_type=item.type.value, action=action, single_use=single_use,
                               allowed_user_ids=allowed)
        if action == "feedback":
            entry["modal_id"] = modal_id
        components[custom_id] = entry
    who = " for " + ", ".join(f"<@{u}>" for u in allowed) if allowed else ""
    return Panel(f"Deployment panel{who}.", view, components, modals)


def _button(label: str, style: discord.ButtonStyle, action: str) -> discord.ui.Button[discord.ui.View]:
    return discord.ui.Button(label=label, style=style, custom_id=new_custom_id(action))


def build_modal(custom_id: str, entry: ModalEntry) -> discord.ui.Modal:
    """The modal a stored entry describes, ready for `platform.modal`."""
    view = discord.ui.Modal(title=entry["title"], custom_id=custom_id, timeout=None)
    for f in entry["fields"]:
        style = discord.TextStyle[f["style"]]
        text: discord.ui.TextInput[discord.ui.Modal] = discord.ui.TextInput(
            label=f["label"], custom_id=f["custom_id"], style=style, required=f["required"]
        )
        view.add_item(text)
    return view

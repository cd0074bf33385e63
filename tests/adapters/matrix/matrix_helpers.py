"""Drive the homeserver simulator like a Matrix user would, and read the gateway's SQLite file
(read-only) so tests check what is on disk rather than what the adapter says."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, TypeAlias

from runtime_support import Row, rows_on_disk
from synapse_driver import SynapseRoomDriver

from chatstate.adapters.matrix import platform
from chatstate.gateway.clock import now_ms
from chatstate.gateway.sim.matrix import SERVER_NAME, MatrixHomeserver

Homeserver: TypeAlias = MatrixHomeserver | SynapseRoomDriver  # the simulator, or this test's room on Synapse

ROOM = f"!ops:{SERVER_NAME}"
ALICE = f"@alice:{SERVER_NAME}"  # an approver
BOB = f"@bob:{SERVER_NAME}"  # an approver
MALLORY = f"@mallory:{SERVER_NAME}"  # a room member, not an approver
REACTIONS = "matrix.approval-reactions"
SYNC = "matrix.sync"
PENDING = "pending"  # core:approvals
HANDLED = "matrix.handled-events"  # the gate's claims
SETTLE_TIMEOUT_S = 15.0


def rows(db: Path, plugin_id: str, namespace: str) -> dict[str, Row]:
    """Live rows of (plugin_id, namespace) in the gateway's database."""
    return rows_on_disk(db, plugin_id, namespace, live_at_ms=now_ms())


def prompts(sim: Homeserver) -> list[dict[str, Any]]:
    """Prompts the bot posted (first delivery of each txn)."""
    return [s for s in sim.sent("m.room.message") if "expires_at" in s["content"].get(platform.APPROVAL_FIELD, {})]


def outcomes(sim: Homeserver) -> list[dict[str, Any]]:
    return [s for s in sim.sent("m.room.message") if "decision" in s["content"].get(platform.APPROVAL_FIELD, {})]


def expired_notices(sim: Homeserver) -> list[dict[str, Any]]:
    return [s for s in sim.sent("m.room.message") if s["content"]["body"] == platform.EXPIRED_TEXT]


def seeds(sim: Homeserver, prompt_id: str) -> list[str]:
    """Reaction keys the bot seeded on `prompt_id`, in order."""
    return [
        s["content"]["m.relates_to"]["key"]
        for s in sim.sent("m.reaction")
        if s["content"]["m.relates_to"]["event_id"] == prompt_id
    ]


async def request(
    sim: Homeserver, action: str, *, command: str = "!approve", sender: str | None = None, room: str | None = None
) -> dict[str, Any]:
    """Ask for an approval and wait until its prompt is posted and every reaction seeded.

    Returns the prompt as sent. Also serves as a barrier: the bot handles events in order, so
    once this prompt is complete every earlier event has been handled.
    """
    room = room or sim.room
    request_id = await sim.send_message(room, sender or sim.alice, f"{command} {action}")
    approval_id = platform.approval_id(room, request_id)
    wanted = len(platform.COMMANDS[command])

    def complete(_: object) -> bool:
        mine = [p for p in prompts(sim) if p["content"][platform.APPROVAL_FIELD]["id"] == approval_id]
        return bool(mine) and len(seeds(sim, mine[0]["event_id"])) == wanted

    await sim.wait_for(complete)
    return next(p for p in prompts(sim) if p["content"][platform.APPROVAL_FIELD]["id"] == approval_id)


async def barrier(sim: Homeserver, room: str | None = None) -> None:
    """Wait until the bot has handled every event injected so far (in `room`)."""
    await request(sim, f"barrier {len(sim.events)}", room=room)


async def settled(db: Path) -> None:
    """Wait until every event the bot claimed is done. An event's state is committed with its
    done mark after its last send, so what the room shows runs a moment ahead of the disk."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while any("done_at" not in r.value for r in rows(db, "matrix", HANDLED).values()):
        if time.monotonic() > deadline:
            raise AssertionError("a claimed event never finished")
        await asyncio.sleep(0.02)

"""What a store call hands back (`Entry`), and the two numbers every write draws: now and a version."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], int]  # ms since epoch


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def new_version() -> int:
    """A fresh row version: 63 random bits (never 0, the "no version" of a v1 row).

    Random rather than a counter so no shared sequence row has to be written on every write;
    `random` is reseeded in a forked child, so two processes do not draw the same sequence.
    """
    return random.getrandbits(63) or 1


@dataclass(frozen=True)
class Entry:
    """One live row as `entries()`, `lookup_entry()` return it.

    `version` changes on every write of the key (compare_and_set / delete_if take it); it is
    left out of equality so an Entry compares by what it holds.
    """

    key: str
    value: Any
    created_at: int  # ms since epoch
    expires_at: int | None  # ms since epoch; None = never
    version: int = field(default=0, compare=False)

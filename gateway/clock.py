"""The one wall clock of the gateway, its adapters and simulators: ms since the epoch.

Every TTL, lease and expiry the gateway and adapters compute is in these ms, so they share one
function (and tests pass their own `Clock` where they need time to move). The state package
keeps its own (it sits below the gateway and imports nothing from it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]  # ms since epoch


def now_ms() -> int:
    return time.time_ns() // 1_000_000

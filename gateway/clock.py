"""The one wall clock: ms since the epoch, for the gateway, its adapters and simulators.

Every TTL, lease and expiry is in these ms, so there is one function: the state package's own
(`state/_spec.py`, which sits below the gateway and imports nothing from it), named here for
everything above it. Tests pass their own `Clock` where they need time to move.
"""

from __future__ import annotations

from chatstate.state._spec import Clock
from chatstate.state._spec import wall_clock_ms as now_ms

__all__ = ["Clock", "now_ms"]

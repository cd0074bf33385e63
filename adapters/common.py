"""Moved: the shared migration machinery is `chatstate.gateway.adapter_state` (AdapterState,
StateSpec, MemoryMap), `chatstate.gateway.claims` (ClaimLedger, RequesterQuota) and
`chatstate.gateway.clock` (now_ms, Clock), so the gateway uses it without importing adapters.

This re-export is kept only for adapters/matrix, which is being reworked in parallel (issue 13);
nothing else imports it, and it goes once Matrix imports the new modules.
"""

from chatstate.gateway.adapter_state import CALLER_ERRORS, AdapterState, MemoryMap, StateSpec
from chatstate.gateway.claims import ClaimLedger, RequesterQuota
from chatstate.gateway.clock import Clock, now_ms

__all__ = ["CALLER_ERRORS", "AdapterState", "Clock", "ClaimLedger", "MemoryMap", "RequesterQuota", "StateSpec", "now_ms"]

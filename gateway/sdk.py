"""The plugin SDK: everything an adapter imports from the gateway, in one place.

An adapter imports `from chatstate.gateway import sdk` (or names from it) and nothing else of
the gateway, so the gateway may change behind this surface (tests/adapters/test_adapter_layout.py
checks it). The pieces, in the order an adapter meets them:
- `AdapterSettings`: the base of its `config.py` settings type (`Text`: a required text, `HttpUrl`: a far end's base URL, `token_kind`: a token's prefix; `CredentialRefused`: the platform refused one at start);
- `StatefulPlugin`, `PluginRuntime`, `Route`: the plugin base (one frozen running object built
  in `build`, health rolled up, its `webhook` POSTed to `handle`) and what the gateway hands it;
- `AdapterState`, `StateSpec`: one namespace of its state, memory in front of the keyed store;
- `InboundGate`, `Job`, `Writes`, `Answer`, `Outcome`, `Holding`, `Refused`: exactly-once for
  inbound items;
- `UserQuota`, `KeyedLocks`: the per-user quota and keyed async locks;
- `Approval`, `ApprovalService`, `Decision`, `DECISIONS`: pending approvals in the core store;
- `reply`: the user's reply hook (`reply.respond(reply.Message(...), default=..., send=...)`);
- `ingress`: input checks (`BadInput`, `json_object`, `credential`, `check_key`, `short_id`);
- `now_ms`, `Clock`, `log`: the wall clock and the gateway's structured logging.
"""

from __future__ import annotations

from chatstate.gateway import ingress, reply
from chatstate.gateway.adapter_state import CALLER_ERRORS, AdapterState, StateSpec
from chatstate.gateway.approvals import DECISIONS, Approval, ApprovalService, Decision
from chatstate.gateway.clock import Clock, now_ms
from chatstate.gateway.gate import Answer, Holding, InboundGate, Job, Outcome, Refused, Writes
from chatstate.gateway.logs import get as log
from chatstate.gateway.plugin import PluginRuntime, Route
from chatstate.gateway.quota import KeyedLocks, UserQuota
from chatstate.gateway.settings import AdapterSettings, CredentialRefused, HttpUrl, Text, token_kind
from chatstate.gateway.stateful import StatefulPlugin
from chatstate.state import StateStoreError

__all__ = [
    "CALLER_ERRORS",
    "DECISIONS",
    "Approval",
    "ApprovalService",
    "Decision",
    "AdapterSettings",
    "AdapterState",
    "Answer",
    "Clock",
    "CredentialRefused",
    "Holding",
    "HttpUrl",
    "InboundGate",
    "Job",
    "KeyedLocks",
    "Outcome",
    "PluginRuntime",
    "Refused",
    "Route",
    "StateSpec",
    "StateStoreError",
    "StatefulPlugin",
    "Text",
    "UserQuota",
    "Writes",
    "ingress",
    "log",
    "now_ms",
    "reply",
    "token_kind",
]

"""GET /metrics: Prometheus text from the gateway's own listener, read from a
real gateway process, and the functions adapters report through."""

from __future__ import annotations

from pathlib import Path

from gw_helpers import bump
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from chatstate import state
from chatstate.gateway import metrics
from chatstate.gateway.clock import now_ms
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sweeper import SweepStatus, sweep_once

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _scrape(gw: GatewayHarness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with gw.http.get(f"{gw.gateway_url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return _samples(await resp.text())


async def test_requests_by_plugin_route_and_status_with_latency(gw: GatewayHarness) -> None:
    for key in ("a", "a", "b"):
        await bump(gw, key)
    async with gw.http.post(f"{gw.gateway_url}/echo", data=b"{}", headers={"X-Echo-Signature": "sha256=0"}) as resp:
        assert resp.status == 401
    samples = await _scrape(gw)
    route = ("route", "/echo")
    assert samples[("chatstate_http_requests_total", (("plugin", "echo"), route, ("status", "200")))] == 3
    assert samples[("chatstate_http_requests_total", (("plugin", "echo"), route, ("status", "401")))] == 1
    assert samples[("chatstate_http_request_seconds_count", (("plugin", "echo"), route))] == 4
    assert samples[("chatstate_http_request_seconds_sum", (("plugin", "echo"), route))] > 0
    assert ("process_resident_memory_bytes", ()) in samples  # the default registry, whole


async def test_adapter_state_mode_and_pending_writes(tmp_path: Path) -> None:
    h = GatewayHarness(
        adapters={"toy": {"secret": "toy-secret", "api_url": "http://127.0.0.1:9/api"}},
        config={"external_plugins": ["toy_adapter:ToyPlugin"], "trusted_plugins": ["toy"]},
        pythonpath=[EXAMPLES],
        state_dir=tmp_path / "s",
    )
    async with h:
        samples = await _scrape(h)
    labels = (("mode", "store"), ("namespace", "toy.events"), ("plugin", "toy"))
    assert samples[("chatstate_adapter_state_mode", labels)] == 1
    assert samples[("chatstate_adapter_state_mode", (("mode", "degraded"), *labels[1:]))] == 0
    assert samples[("chatstate_adapter_pending_writes", (("namespace", "toy.events"), ("plugin", "toy")))] == 0


async def test_sweeps_and_adapter_counters_report_to_the_default_registry(tmp_path: Path) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (value("chatstate_sweep_seconds_count"), value("chatstate_sweep_rows_total"))
    db = tmp_path / "state.sqlite"
    an_hour_ago = now_ms() - 3_600_000
    store = state.open_keyed_store("p", "ns", max_entries=10, path=db, clock=lambda: an_hour_ago)
    store.register("k", 1, ttl_ms=1)  # expired long ago by the real clock the sweep uses
    store.close()
    with state.Database(db, settings=state.StoreSettings()) as database:
        rows = await sweep_once(SweepStatus(60.0), database)
    assert rows == 1
    assert value("chatstate_sweep_seconds_count") == before[0] + 1
    assert value("chatstate_sweep_rows_total") == before[1] + 1

    hits = value("chatstate_dedupe_hits_total", plugin="slack", kind="event")
    metrics.record_dedupe_hit("slack", "event")
    metrics.record_matrix_backfill(3)
    metrics.record_matrix_skip("already_handled", 2)
    assert value("chatstate_dedupe_hits_total", plugin="slack", kind="event") == hits + 1
    assert value("chatstate_matrix_backfill_events_total") >= 3
    assert value("chatstate_matrix_skipped_events_total", reason="already_handled") >= 2


def test_every_metric_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
    names = {f.name for f in REGISTRY.collect() if f.name.startswith("chatstate_")}
    names |= {"chatstate_store_operations", "chatstate_store_operation_seconds"}  # state/ defines these
    for name in names:
        assert f"`{name}" in doc, name

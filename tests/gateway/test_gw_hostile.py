"""Hostile input on the gateway's own routes: junk credentials, deep JSON, caller
errors. Each is answered 4xx, with no state written and /healthz left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from gw_helpers import SECRET, stored_counts
from hostile_helpers import raw_request

from chatstate.gateway import ingress
from chatstate.gateway.app import build_app
from chatstate.gateway.config import parse_config
from chatstate.gateway.echo import sign
from chatstate.gateway.registry import load_plugins


def _echo_app(tmp_path: Path):
    config = parse_config({"state": {"dir": str(tmp_path)}, "adapters": {"echo": {"secret": SECRET}}}, env={})
    return build_app(config, load_plugins(config))


def _signed(body: bytes) -> dict[str, str]:
    return {"X-Echo-Signature": sign(SECRET, "POST", "/echo", body), "Content-Type": "application/json"}


async def test_echo_key_over_the_store_limit_is_400_and_health_stays_ok(tmp_path: Path) -> None:
    async with TestClient(TestServer(_echo_app(tmp_path))) as client:
        body = json.dumps({"key": "k" * 600}).encode()
        resp = await client.post("/echo", data=body, headers=_signed(body))
        assert resp.status == 400, await resp.text()
        path = "/echo/" + "k" * 600
        resp = await client.get(path, headers={"X-Echo-Signature": sign(SECRET, "GET", path)})
        assert resp.status == 400
        health = await (await client.get("/healthz")).json()
        assert health["status"] == "ok" and health["adapters"]["echo"]["status"] == "ok"
    assert stored_counts(tmp_path / "state.sqlite") == {}


async def test_echo_lone_surrogate_key_is_400(tmp_path: Path) -> None:
    async with TestClient(TestServer(_echo_app(tmp_path))) as client:
        body = b'{"key": "a\\ud800"}'
        resp = await client.post("/echo", data=body, headers=_signed(body))
        assert resp.status == 400
        assert (await (await client.get("/healthz")).json())["status"] == "ok"


async def test_invalid_utf8_signature_header_is_401(tmp_path: Path) -> None:
    server = TestServer(_echo_app(tmp_path))
    async with TestClient(server):
        status, body = await raw_request(
            server.port,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Echo-Signature: sha256=\xff\xfe\xc3\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
    assert status == 401, body
    assert b"Traceback" not in body


@pytest.mark.parametrize("depth", [33, 10_000])
async def test_deep_json_is_400_not_recursion(tmp_path: Path, depth: int) -> None:
    async with TestClient(TestServer(_echo_app(tmp_path))) as client:
        body = b'{"key": ' + b"[" * depth + b"]" * depth + b"}"
        resp = await client.post("/echo", data=body, headers=_signed(body))
        assert resp.status == 400


def test_depth_scan_ignores_brackets_in_strings() -> None:
    assert ingress.loads(json.dumps({"k": "[" * 1000}).encode()) == {"k": "[" * 1000}
    with pytest.raises(ingress.BadInput):
        ingress.loads(b"[" * 40 + b"]" * 40)
    assert ingress.loads(b"[" * 32 + b"]" * 32) is not None


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\uD800", b"\\uDc01"])
def test_a_lone_surrogate_is_refused_whatever_the_case_of_its_escape(escape: bytes) -> None:
    with pytest.raises(ingress.BadInput, match="lone surrogate"):
        ingress.loads(b'{"key": "a' + escape + b'"}')
    assert ingress.loads(b'{"key": "\\ud83d\\uDE00"}') == {"key": "\U0001f600"}  # a pair is fine


def test_credential_header_refuses_junk() -> None:
    assert ingress.credential({"h": "sha256=\udcff"}, "h") is None
    assert ingress.credential({"h": "v0=é"}, "h") is None
    assert ingress.credential({"h": "x" * 600}, "h") is None
    assert ingress.credential({"h": "v0=abc"}, "h") == "v0=abc"

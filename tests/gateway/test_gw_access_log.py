"""The access log line: one JSON object per request with the documented fields, the same
whether `configure()` owns the output (the preformatted line) or logging was reconfigured (a
LogRecord through the formatter), for any path a caller can send."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from chatstate.gateway import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("info")
    out = io.StringIO()
    assert logs._output is not None
    logs._output.handler.setStream(out)
    try:
        yield out
    finally:
        logs.flush()
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def _owned(access: logs.AccessLogger) -> Iterator[None]:
    """pytest's log capture puts its own handlers on the root for each test phase: taken off here,
    so the line tested is the preformatted one, not a LogRecord through the formatter."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    assert logs._output is not None
    root.handlers[:] = [logs._output.handler]
    try:
        assert logs._output.owns(access.logger)
        yield
    finally:
        root.handlers[:] = handlers


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    logs.flush()
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("raw_path", ["/echo", "/echo/k%22%5C%C3%A9%01%F0%9F%98%80", "/x%ED%A0%80y"])
@pytest.mark.parametrize("plugin", ["echo", None])
def test_both_renderings_carry_the_same_fields(stream: io.StringIO, raw_path: str, plugin: str | None) -> None:
    access = logs.AccessLogger(logs.get("access").logger, "")
    request = make_mocked_request("POST", raw_path)
    if plugin is not None:
        request[logs.PLUGIN_ID] = plugin
    with _owned(access):
        access.log(request, web.Response(status=201), 0.0123456)  # the preformatted line
    extra = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(extra)  # logging reconfigured: the record goes through the formatter
    try:
        access.log(request, web.Response(status=201), 0.0123456)
    finally:
        logging.getLogger().removeHandler(extra)
    fast, slow = _lines(stream)
    assert fast.pop("ts") == pytest.approx(slow.pop("ts"), abs=5)
    assert fast == slow
    expected: dict[str, object] = {
        **{"level": "info", "logger": "gateway.access", "event": "http_request", "method": "POST"},
        **{"path": request.path, "status": 201, "duration_ms": 12.346},
    }
    assert fast == expected | ({"plugin": plugin} if plugin else {})


def test_each_line_names_its_own_request_on_one_connection(stream: io.StringIO) -> None:
    access = logs.AccessLogger(logs.get("access").logger, "")  # aiohttp makes one per connection
    asked = [
        ("POST", "/echo", "echo"),
        ("POST", "/echo", "echo"),
        ("GET", "/echo/k", "echo"),
        ("GET", "/healthz", None),
    ]
    with _owned(access):
        for method, path, plugin in asked:
            request = make_mocked_request(method, path)
            if plugin is not None:
                request[logs.PLUGIN_ID] = plugin
            access.log(request, web.Response(status=200), 0.001)
    got = [(line["method"], line["path"], line.get("plugin")) for line in _lines(stream)]
    assert got == asked

"""Structured logs: one JSON object a line on stderr, one line per event.

Call sites log an event name as the message and the facts as `extra` fields
(`adapter`, `plugin`, `namespace`, `op`, `duration_ms`, ...). Stored values never go in a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

LOGGER_NAME = "gateway"
# Attributes every LogRecord has; anything else on a record came from `extra=`.
# Which plugin served a request, for the access log; typed where aiohttp has RequestKey (3.12+).
PLUGIN_ID: Any = web.RequestKey("plugin", str) if hasattr(web, "RequestKey") else "plugin"
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: ts, level, logger, event, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["error"] = f"{type(exc).__name__}: {exc}"
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class FieldsAdapter(logging.LoggerAdapter[logging.Logger]):
    """A LoggerAdapter that merges its fields with the call's `extra` (3.11's replaces them)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def configure(level: str = "info") -> logging.Logger:
    """Send the gateway's (and aiohttp's) records to stderr as JSON lines; returns the root."""
    global _output
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if _output is not None:
        _output.flush()
    _output = _Output(handler)
    return logging.getLogger(LOGGER_NAME)


def get(name: str = "", **fields: Any) -> FieldsAdapter:
    """A logger under `gateway` carrying `fields` on every line."""
    logger = logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)
    return FieldsAdapter(logger, fields)


class Timer:
    """`with Timer() as t: ...; t.ms` — duration_ms for log lines, monotonic clock."""

    def __enter__(self) -> Timer:
        self._start = time.monotonic()
        self.ms = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = round((time.monotonic() - self._start) * 1000, 3)


def fields(**kw: Any) -> Mapping[str, Any]:
    """Drop None values so log lines carry only the facts that apply."""
    return {k: v for k, v in kw.items() if v is not None}


class AccessLogger(AbstractAccessLogger):
    """aiohttp access log as one JSON line per request (with the plugin that served it).

    The hot path of every request. When `configure()` owns the output, the line is one
    preformatted string (times to the millisecond, strings escaped as json.dumps does) rather
    than a LogRecord through the formatter, and the lines of one event-loop turn go out in one
    write, queued with `call_soon` so they are written before the loop next waits for I/O.
    The fields are the same either way: ts, level, logger, event, plugin, method, path, status,
    duration_ms.
    """

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # what every line of this logger says between its time and its request (aiohttp makes
        # one AccessLogger per connection, so this is escaped once a connection, not a request)
        self._event = f'"level":"info","logger":{_quote(logger.name)},"event":"http_request"'

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if _output is None or not _output.owns(self.logger):
            self.logger.info(
                "http_request",
                extra=fields(
                    plugin=request.get(PLUGIN_ID),
                    method=request.method,
                    path=request.path,
                    status=response.status,
                    duration_ms=round(time * 1000, 3),
                ),
            )
            return
        plugin = request.get(PLUGIN_ID)
        served_by = "" if plugin is None else f',"plugin":{_quote(plugin)}'
        _output.queue(
            f'{{"ts":{_now():.3f},{self._event}{served_by},"method":{_quote(request.method)},'
            f'"path":{_quote(request.path)},"status":{response.status},"duration_ms":{time * 1000:.3f}}}'
        )


# json's own string escaping (what JsonFormatter's json.dumps applies to every string): the access
# line is one f-string with only its strings escaped, not a dict built and encoded per request
_quote = json.encoder.encode_basestring_ascii
_now = time.time


class _Output:
    """The stream handler `configure()` installed, and access lines waiting for this loop turn."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self.handler = handler
        self.pending: list[str] = []

    def owns(self, logger: logging.Logger) -> bool:
        """True when `logger` logs info lines and only to our handler (nothing reconfigured)."""
        handlers = logging.root.handlers
        return (
            len(handlers) == 1
            and handlers[0] is self.handler
            and not logger.handlers
            and logger.propagate
            and logger.isEnabledFor(logging.INFO)
        )

    def queue(self, line: str) -> None:
        if not self.pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write now
                self.pending.append(line)
                self.flush()
                return
        self.pending.append(line)

    def flush(self) -> None:
        """Write the queued lines, one write for all of them."""
        if not self.pending:
            return
        text, self.pending = "\n".join(self.pending) + "\n", []
        handler = self.handler
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": "http_request"}))
        finally:
            handler.release()


_output: _Output | None = None


def flush() -> None:
    """Write any access-log lines still queued (the server calls this once it has stopped)."""
    if _output is not None:
        _output.flush()

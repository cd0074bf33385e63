"""Helpers for the hostile-input tests: a raw HTTP request (bytes a client library refuses to
send, such as invalid UTF-8 in a header)."""

from __future__ import annotations

import asyncio


async def raw_request(port: int, request: bytes, *, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send `request` verbatim; return (status, whole response). Needs `Connection: close`."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(response.split(b" ", 2)[1])
    return status, response

"""Keep-alive connections are closed after ``keepalive_requests`` requests, so that clients
holding long-lived connections spread over the workers (app/core/keepalive.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from app.core import keepalive
from app.core.config import Settings
from app.core.keepalive import KeepAliveLimitMiddleware
from app.main import create_app
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, keepalive_requests=3)


@pytest.fixture
async def port(settings: Settings) -> AsyncIterator[int]:
    """The service behind a real uvicorn server on a free port."""
    listening = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    # Connections wait in the socket's backlog until the server has started.
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    yield listening.getsockname()[1]
    server.should_exit = True
    await serving
    listening.close()


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: timebank\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length")
    )
    await reader.readexactly(length)
    return head.lower()


async def test_the_third_response_on_a_connection_closes_it_and_a_new_one_is_served(
    port: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    heads = [await _get(reader, writer) for _ in range(3)]
    assert [b"connection: close" in head for head in heads] == [False, False, True]
    assert all(head.startswith(b"http/1.1 200") for head in heads)
    assert await reader.read() == b""  # the server closed the connection
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert b"connection: close" not in await _get(reader, writer)
    writer.close()


async def _count_closes(
    middleware: KeepAliveLimitMiddleware, clients: list[tuple[str, int]]
) -> int:
    closes = 0

    async def send(message: Message) -> None:
        nonlocal closes
        if (b"connection", b"close") in message.get("headers", []):
            closes += 1

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    for client in clients:
        scope: Scope = {"type": "http", "client": client, "headers": []}
        await middleware(scope, receive, send)
    return closes


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def test_zero_keeps_connections_open_however_many_requests_they_carry() -> None:
    middleware = KeepAliveLimitMiddleware(_ok, max_requests=0)
    assert await _count_closes(middleware, [("10.0.0.1", 5000)] * 500) == 0


async def test_each_connection_is_counted_on_its_own_and_the_longest_idle_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keepalive, "TRACKED_CONNECTIONS", 2)
    middleware = KeepAliveLimitMiddleware(_ok, max_requests=2)
    a, b, c = ("10.0.0.1", 5000), ("10.0.0.1", 5001), ("10.0.0.2", 5000)
    # a and b each reach their second request: two closes. a's count starts over after its close.
    assert await _count_closes(middleware, [a, b, a, b]) == 2
    # Three connections tracked at once, two remembered: a, the longest idle, is forgotten,
    # so its next request counts as its first.
    assert await _count_closes(middleware, [a, b, c, a]) == 0
    assert await _count_closes(middleware, [c]) == 1

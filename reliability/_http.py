"""A minimal HTTP/1.1 keep-alive client on asyncio streams (after bench/_load.py's
RawConnection), generalised to any method, a bearer token per request and a timeout.

Cheap on CPU, which matters because the clients share two cores with the server and the
database. Any failure to get a whole answer raises :class:`Unanswered` and drops the
connection; the caller decides whether to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any


class Unanswered(Exception):
    """No complete HTTP answer: refused or reset connection, timeout, truncated reply."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        """The problem ``code`` of a refusal, else a short excerpt of the body."""
        try:
            code = json.loads(self.body).get("code")
        except (ValueError, AttributeError):
            code = None
        return str(code) if code else self.body[:40].decode(errors="replace")

    @property
    def replayed(self) -> bool:
        return self.headers.get("idempotency-replayed") == "true"


# uvicorn closes a keep-alive connection idle for 5 s; a request sent just as it does so meets
# a closed socket. Reopen connections idle for longer than this instead.
MAX_IDLE_SECONDS = 3.0


class Connection:
    """One keep-alive connection to 127.0.0.1; reopened after any failure or a long idle."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: bytes | None = None,
        key: str | None = None,
        content_type: str = "application/json",
    ) -> Reply:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._request(method, path, token, body, key, content_type)
        except (OSError, EOFError, TimeoutError, ValueError, IndexError) as exc:
            await self.close()
            raise Unanswered(type(exc).__name__) from exc
        except asyncio.IncompleteReadError as exc:
            await self.close()
            raise Unanswered("IncompleteRead") from exc

    async def _request(
        self,
        method: str,
        path: str,
        token: str | None,
        body: bytes | None,
        key: str | None,
        content_type: str,
    ) -> Reply:
        if self.writer is not None and time.monotonic() - self.last_used > MAX_IDLE_SECONDS:
            await self.close()
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines.append("Accept: application/json")
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        if key is not None:
            lines.append(f"Idempotency-Key: {key}")
        if body is not None:
            lines.append(f"Content-Type: {content_type}")
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        head_lines = head.decode("latin-1").split("\r\n")
        status = int(head_lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in head_lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            payload = await self._chunked()
        else:
            length = int(headers.get("content-length", "0"))
            payload = await self.reader.readexactly(length) if length else b""
        self.last_used = time.monotonic()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, headers, payload)

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def close(self) -> None:
        writer = self.writer
        self.reader = self.writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

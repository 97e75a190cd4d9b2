"""Keep-alive connections are closed after a number of requests, as nginx does
(``keepalive_requests``), so that load spreads over the workers.

With several workers sharing one listening socket, the worker that wakes first accepts a whole
burst of new connections, and keep-alive clients (a partner's connection pool, a proxy, a load
generator) then stay where they landed: one worker was seen serving 24 of 32 connections while
the other served 8, and the first one's clients waited while the second idled. The response
to a connection's ``max_requests``-th request carries ``Connection: close``; HTTP/1.1 clients
open a new connection for their next request, and the kernel hands it to whichever worker is
free to accept it. A connection is known by its client's address and port.
"""

from __future__ import annotations

from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TRACKED_CONNECTIONS = 4096  # the longest-idle connections are forgotten beyond this


class KeepAliveLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self._served: OrderedDict[tuple[object, ...], int] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or not client or self.max_requests <= 0:
            await self.app(scope, receive, send)
            return
        connection = tuple(client)
        served = self._served.pop(connection, 0) + 1
        if served < self.max_requests:
            self._served[connection] = served
            if len(self._served) > TRACKED_CONNECTIONS:
                self._served.popitem(last=False)
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_closing)

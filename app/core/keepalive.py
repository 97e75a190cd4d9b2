"""Keep-alive connections are closed after a number of requests, as nginx does
(``keepalive_requests``), so that load spreads over the workers.

With several workers sharing one listening socket, the worker that wakes first accepts a whole
burst of new connections, and keep-alive clients (a partner's connection pool, a proxy, a load
generator) then stay where they landed: one worker was seen serving 24 of 32 connections while
the other served 8, and the first one's clients waited while the second idled. The response
to a connection's ``max_requests``-th request carries ``Connection: close``; HTTP/1.1 clients
open a new connection for their next request, and the kernel hands it to whichever worker is
free to accept it. A connection is known by its client's address and port.

That alone drifts the wrong way under steady load (a busy worker's connections reach their
limit later, so they stay): with several workers, a worker carrying more than its share of
the requests in flight also closes the connection after each response until it no longer
does (app/core/worker_load.py).
"""

from __future__ import annotations

from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.worker_load import WorkerLoad

TRACKED_CONNECTIONS = 4096  # the longest-idle connections are forgotten beyond this


class KeepAliveLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_requests: int, load: WorkerLoad | None = None) -> None:
        self.app = app
        self.max_requests = max_requests
        self.load = load  # several workers: the board of their requests in flight
        self.in_flight = 0
        self._served: OrderedDict[tuple[object, ...], int] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or not client:
            await self.app(scope, receive, send)
            return
        if self.load is None:
            await self._serve(scope, receive, send, tuple(client), shed=False)
            return
        # A worker carrying more than its share of the requests in flight closes this
        # connection after its response: the client reconnects, and the worker that accepts
        # first is the less busy one (app/core/worker_load.py).
        self.in_flight += 1
        self.load.publish(self.in_flight)
        try:
            shed = self.load.over_share(self.in_flight)
            await self._serve(scope, receive, send, tuple(client), shed=shed)
        finally:
            self.in_flight -= 1
            self.load.publish(self.in_flight)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        connection: tuple[object, ...],
        *,
        shed: bool,
    ) -> None:
        served = self._served.pop(connection, 0) + 1
        if not shed and (self.max_requests <= 0 or served < self.max_requests):
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

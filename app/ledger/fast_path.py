"""``POST /v1/communities/{community_id}/transactions`` without FastAPI's per-request machinery.

The route is the ledger's hot path, and most of a worker's time on it went to routing and
dependency solving around four lines of work: for a well-formed request, a worker spent more
on matching the path among every route, resolving the route's dependencies and wrapping the
endpoint than on the posting. This ASGI middleware answers such a request itself, calling the
same function as the route (``single_post.answer``); the route stays the contract (its
OpenAPI, its validation) and still answers everything else.

It takes a request only when everything the route would check before the database holds:
a JSON body of known length that validates as ``TransactionCreate``, one ``Idempotency-Key``
of 1-255 characters, one valid bearer token, a community id that parses. Anything else (a
malformed body, a missing key, an expired token, another content type, a proxy's root path)
goes on to the route with the body exactly as it came, so every refusal before the database
is the route's own, in its order and its words. Refusals from the database (the caller's
access, the key, the balances) are rendered by the application's own DomainError handler.
"""

from __future__ import annotations

import json

from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access.community import CommunityRef
from app.access.principal import TokenSubject, token_subject
from app.core.errors import DomainError, domain_error_response
from app.core.ids import parse_id
from app.core.security import TokenService
from app.ledger.idempotency import MAX_KEY_LENGTH
from app.ledger.router import router as ledger_router
from app.ledger.schemas import TransactionCreate
from app.ledger.single_post import answer

ROUTE_OPERATION = "create_transaction"


class SinglePostingFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The route itself says which paths are its own (and labels the request's metrics).
        self.route = next(
            route
            for route in ledger_router.routes
            if isinstance(route, APIRoute) and route.operation_id == ROUTE_OPERATION
        )
        self.path = self.route.path_regex

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        match = self.path.match(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        taken = await self._take(scope, receive, match["community_id"], received)
        if taken is None:
            await self.app(scope, _replaying(received, receive), send)
            return
        subject, community, key_header, body = taken
        app_state = scope["app"].state
        scope["route"] = self.route  # what the metrics and access log label the request by
        try:
            response = await answer(
                app_state.single_poster, subject, community, key_header, body, scope["path"]
            )
        except DomainError as exc:
            response = domain_error_response(Request(scope), exc)
        await response(scope, receive, send)

    async def _take(
        self, scope: Scope, receive: Receive, raw_community: str, received: list[Message]
    ) -> tuple[TokenSubject, CommunityRef, str, TransactionCreate] | None:
        """What the route's parameters would be, or None for a request the route must see
        (``received`` then holds what was read of its body, to be replayed)."""
        headers = _single_headers(scope)
        if headers is None:
            return None
        content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        key = headers.get(b"idempotency-key")
        authorization = headers.get(b"authorization")
        if (
            content_type != b"application/json"
            or b"content-length" not in headers  # a chunked body could outgrow the size limit
            or key is None
            or authorization is None
        ):
            return None
        key_header = key.decode("latin-1")
        if not 1 <= len(key_header) <= MAX_KEY_LENGTH:
            return None
        scheme, token = get_authorization_scheme_param(authorization.decode("latin-1"))
        community_id = parse_id(raw_community)
        if scheme.lower() != "bearer" or not token or community_id is None:
            return None
        tokens: TokenService = scope["app"].state.tokens
        try:
            subject = token_subject(tokens, token)
        except DomainError:
            return None
        body = await _read_body(receive, received)
        if body is None:
            return None
        try:
            data = TransactionCreate.model_validate(json.loads(body))
        except Exception:  # not JSON, too deeply nested (RecursionError), or not valid
            return None
        return subject, CommunityRef(id=community_id, as_written=raw_community), key_header, data


def _single_headers(scope: Scope) -> dict[bytes, bytes] | None:
    """The request's headers by lower-case name; None when a header the route reads came
    more than once (the route decides what that means)."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in headers and name in (b"idempotency-key", b"authorization", b"content-type"):
            return None
        headers[name] = value
    return headers


async def _read_body(receive: Receive, received: list[Message]) -> bytes | None:
    """The whole body, keeping each message in ``received``; None if the client left."""
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request":
            return None
        if not message.get("more_body", False):
            return b"".join(m.get("body", b"") for m in received)


def _replaying(received: list[Message], receive: Receive) -> Receive:
    """``receive`` as if nothing had been read from it yet."""
    pending = list(received)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay

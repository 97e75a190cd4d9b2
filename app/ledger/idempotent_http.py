"""The HTTP side of idempotent writes, shared by every route that moves hours: the
``Idempotency-Key`` header, the key a request maps to, and the (possibly replayed) reply."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Request, Response
from pydantic import BaseModel

from app.access.principal import Principal, TokenSubject
from app.ledger.idempotency import MAX_KEY_LENGTH, IdempotencyKey, Outcome, request_fingerprint

IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="A unique key per intended write (a UUID is ideal). A retry with the same "
        "key and body replays the first answer with `Idempotency-Replayed: true`.",
    ),
]

# Routes that always move hours (transactions, batches) require the key: the contract says so,
# and FastAPI refuses a request without it while validating headers, answered 400
# ``idempotency_key_required`` (app.core.errors.IdempotencyKeyRequired).
RequiredIdempotencyHeader = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Required. A unique key per intended write (a UUID is ideal). A retry with "
        "the same key and body replays the first answer with `Idempotency-Replayed: true`.",
    ),
]


def idempotency_key(
    request: Request, principal: Principal | TokenSubject, header: str | None, payload: BaseModel
) -> IdempotencyKey | None:
    """The key this request is made under (keys are scoped per user or client); None when
    an optional header was not sent."""
    if header is None:
        return None
    return request_key(principal, header, request.method, request.url.path, payload)


def request_key(
    principal: Principal | TokenSubject, header: str, method: str, path: str, payload: BaseModel
) -> IdempotencyKey:
    return IdempotencyKey(
        principal=principal.idempotency_scope,
        key=header,
        method=method,
        path=path,
        request_hash=request_fingerprint(method, path, payload),
    )


def idempotent_reply(outcome: Outcome) -> Response:
    headers = {"Idempotency-Replayed": "true"} if outcome.replayed else {}
    return Response(
        content=outcome.body,
        status_code=outcome.status,
        media_type="application/json",
        headers=headers,
    )

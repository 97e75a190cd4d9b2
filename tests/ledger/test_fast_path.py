"""The single-posting fast path (app/ledger/fast_path.py) answers only well-formed requests,
and hands every other one to the route with its body exactly as it came.

The route's own behaviour, whichever of the two answers, is held by the ledger's API tests;
here the middleware runs against a recording route and a recording poster, so each test shows
which of the two answered and what each was given.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from starlette.types import Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.security import TokenService
from app.ledger import errors
from app.ledger.fast_path import SinglePostingFastPath
from app.ledger.idempotency import Outcome
from app.ledger.single_post import SinglePosting
from tests.core.test_operations import _request_counts
from tests.factories import Api
from tests.ledger.helpers import balance, check_books, open_books, refused

COMMUNITY = "0190d0a0-0000-7000-8000-0000000000c1"
_ROUTE = "/v1/communities/{community_id}/transactions"  # the label metrics give the route
USER = uuid.UUID("0190d0a0-0000-7000-8000-0000000000a1")
A = "0190d0a0-0000-7000-8000-0000000000f1"
B = "0190d0a0-0000-7000-8000-0000000000f2"
pytestmark = pytest.mark.anyio

BODY = json.dumps(
    {"entries": [{"account_id": A, "minutes": 30}, {"account_id": B, "minutes": -30}]}
)


@dataclass
class RecordingPoster:
    outcome: Outcome = field(default_factory=lambda: Outcome(201, '{"id":"t"}', replayed=False))
    refusal: Exception | None = None
    posted: list[SinglePosting] = field(default_factory=list)

    async def post(self, posting: SinglePosting) -> Outcome:
        self.posted.append(posting)
        if self.refusal is not None:
            raise self.refusal
        return self.outcome

    async def close(self) -> None:
        pass


@dataclass
class RecordingRoute:
    """Stands for the FastAPI application inside the middleware: keeps what it was given."""

    scopes: list[Scope] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"route"})


@dataclass
class Exchange:
    status: int
    headers: dict[str, str]
    body: bytes


class Harness:
    def __init__(self) -> None:
        self.tokens = TokenService(Settings(environment="test"))
        self.poster = RecordingPoster()
        self.route = RecordingRoute()
        self.middleware = SinglePostingFastPath(self.route)
        self.app = SimpleNamespace(
            state=SimpleNamespace(tokens=self.tokens, single_poster=self.poster)
        )

    def token(self, scopes: frozenset[str] = frozenset()) -> str:
        return self.tokens.issue_access_token(f"user:{USER}", scopes)

    def headers(self, **changes: str | None) -> list[tuple[bytes, bytes]]:
        values: dict[str, str | None] = {
            "content-type": "application/json",
            "content-length": str(len(BODY)),
            "idempotency-key": "key-1",
            "authorization": f"Bearer {self.token()}",
        }
        values.update({name.replace("_", "-"): value for name, value in changes.items()})
        return [(k.encode(), v.encode()) for k, v in values.items() if v is not None]

    async def send(
        self,
        *,
        path: str = f"/v1/communities/{COMMUNITY}/transactions",
        method: str = "POST",
        headers: list[tuple[bytes, bytes]] | None = None,
        chunks: list[bytes] | None = None,
        root_path: str = "",
        disconnect: bool = False,
    ) -> Exchange:
        messages: list[Message] = []
        parts = chunks if chunks is not None else [BODY.encode()]
        for i, chunk in enumerate(parts):
            messages.append(
                {"type": "http.request", "body": chunk, "more_body": i < len(parts) - 1}
            )
        if disconnect:
            messages = [{**messages[0], "more_body": True}, {"type": "http.disconnect"}]
        scope: Scope = {
            "type": "http",
            "method": method,
            "path": path,
            "root_path": root_path,
            "query_string": b"",
            "headers": headers if headers is not None else self.headers(),
            "app": self.app,
            "state": {"request_id": "req-1"},
        }
        sent: list[Message] = []

        async def receive() -> Message:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await self.middleware(scope, receive, send)
        start = sent[0]
        return Exchange(
            status=start["status"],
            headers={k.decode(): v.decode() for k, v in start["headers"]},
            body=b"".join(m.get("body", b"") for m in sent[1:]),
        )


@pytest.fixture
def harness() -> Harness:
    return Harness()


async def test_a_well_formed_posting_is_answered_without_the_route(harness: Harness) -> None:
    harness.poster.outcome = Outcome(201, '{"id":"t1"}', replayed=False)

    answer = await harness.send()

    assert (answer.status, answer.body) == (201, b'{"id":"t1"}')
    assert answer.headers["content-type"] == "application/json"
    assert "idempotency-replayed" not in answer.headers
    assert harness.route.scopes == []
    [posting] = harness.poster.posted
    assert posting.subject.user_id == USER
    assert str(posting.community.id) == COMMUNITY
    assert posting.key.key == "key-1"
    assert posting.key.path == f"/v1/communities/{COMMUNITY}/transactions"
    assert posting.key.principal == f"user:{USER}"
    assert [(str(e.account_id), e.minutes) for e in posting.data.entries] == [(A, 30), (B, -30)]


async def test_a_replay_says_so_and_a_body_in_pieces_is_read_whole(harness: Harness) -> None:
    harness.poster.outcome = Outcome(201, '{"id":"t1"}', replayed=True)
    half = len(BODY) // 2

    answer = await harness.send(chunks=[BODY[:half].encode(), BODY[half:].encode()])

    assert answer.headers["idempotency-replayed"] == "true"
    assert len(harness.poster.posted) == 1
    assert harness.route.scopes == []


async def test_a_refusal_from_the_database_is_a_problem_document(harness: Harness) -> None:
    harness.poster.refusal = errors.LedgerBusy("The ledger is busy; retry shortly.")

    answer = await harness.send()

    assert answer.status == 503
    assert answer.headers["content-type"] == "application/problem+json"
    problem = json.loads(answer.body)
    assert problem["code"] == "ledger_busy"
    assert problem["instance"] == f"/v1/communities/{COMMUNITY}/transactions"
    assert problem["request_id"] == "req-1"
    assert harness.route.scopes == []


async def test_through_the_service_both_answers_carry_the_request_context(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await open_books(Api(client, app), members=2)
    first, second = books.members
    path = f"/v1/communities/{books.community['id']}/transactions"
    body = {
        "entries": [
            {"account_id": first.account_id, "minutes": 15},
            {"account_id": second.account_id, "minutes": -15},
        ]
    }
    headers = {**books.coordinator.headers, "X-Request-ID": "fast-1"}

    posted = await client.post(path, json=body, headers={**headers, "Idempotency-Key": "k1"})
    replayed = await client.post(path, json=body, headers={**headers, "Idempotency-Key": "k1"})
    keyless = await client.post(path, json=body, headers=headers)  # the route refuses it
    deep = await client.post(
        path,
        content=b"[" * 100_000,
        headers={**headers, "Idempotency-Key": "k2", "Content-Type": "application/json"},
    )
    counts = _request_counts((await client.get("/metrics")).text)

    assert posted.status_code == 201
    assert replayed.headers["idempotency-replayed"] == "true"
    assert replayed.json() == posted.json()
    refused(keyless, 400, "idempotency_key_required")
    assert deep.status_code == 400, deep.text  # refused by the route, never a 500
    for answer in (posted, keyless):
        assert answer.headers["x-request-id"] == "fast-1"
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert counts[("POST", _ROUTE, "201")] == 2
    assert counts[("POST", _ROUTE, "400")] == 2  # the keyless and the deep one
    assert await balance(client, first.account_id, books.coordinator) == 15
    await check_books(app)


def _changed(harness: Harness, **changes: str | None) -> dict[str, Any]:
    return {"headers": harness.headers(**changes)}


@pytest.mark.parametrize(
    ("case", "request_args"),
    [
        ("no key", lambda h: _changed(h, idempotency_key=None)),
        ("an empty key", lambda h: _changed(h, idempotency_key="")),
        ("a key over 255 characters", lambda h: _changed(h, idempotency_key="k" * 256)),
        ("no token", lambda h: _changed(h, authorization=None)),
        ("another scheme", lambda h: _changed(h, authorization="Basic dXNlcjpwYXNz")),
        ("a bad token", lambda h: _changed(h, authorization="Bearer not-a-token")),
        ("a form body", lambda h: _changed(h, content_type="application/x-www-form-urlencoded")),
        ("a chunked body", lambda h: _changed(h, content_length=None)),
        ("a community id that is no id", lambda h: {"path": "/v1/communities/abc/transactions"}),
        ("a community slug", lambda h: {"path": "/v1/communities/my-bank/transactions"}),
        ("a proxy's root path", lambda h: {"root_path": "/ledger"}),
        ("malformed JSON", lambda h: {"chunks": [b'{"entries": [']}),
        ("a body that does not validate", lambda h: {"chunks": [b'{"entries": 5}']}),
        ("a JSON list", lambda h: {"chunks": [b"[]"]}),
        ("JSON nested too deep to parse", lambda h: {"chunks": [b"[" * 100_000]}),
        ("an unknown field", lambda h: {"chunks": [BODY[:-1].encode() + b', "x": 1}']}),
        (
            "two keys",
            lambda h: {"headers": [*h.headers(), (b"idempotency-key", b"key-2")]},
        ),
        (
            "two tokens",
            lambda h: {"headers": [*h.headers(), (b"authorization", b"Bearer x")]},
        ),
    ],
)
async def test_anything_else_goes_to_the_route_with_its_body_untouched(
    harness: Harness, case: str, request_args: Any
) -> None:
    args = request_args(harness)
    sent_body = b"".join(args.get("chunks", [BODY.encode()]))

    answer = await harness.send(**args)

    assert (answer.status, answer.body) == (299, b"route"), case
    assert harness.route.bodies == [sent_body]
    assert harness.poster.posted == []


async def test_a_client_that_leaves_mid_body_is_the_routes_to_handle(harness: Harness) -> None:
    answer = await harness.send(disconnect=True)

    assert answer.status == 299
    assert harness.route.bodies == [BODY.encode()]
    assert harness.poster.posted == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v1/communities/{COMMUNITY}/transactions"),
        ("POST", f"/v1/communities/{COMMUNITY}/transactions/batch"),
        ("POST", f"/v1/communities/{COMMUNITY}/exchanges"),
    ],
)
async def test_other_routes_pass_straight_through(harness: Harness, method: str, path: str) -> None:
    answer = await harness.send(method=method, path=path)

    assert answer.status == 299
    assert harness.poster.posted == []

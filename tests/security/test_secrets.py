"""Password hashes never leave the server: not in any response, not in any log line.

A walk through the API (sign-up, sign-in, refresh, members, ledger, exchanges, listings, fund,
partner clients, refusals) records every response body; none may carry an argon2 hash, the
column's name, or the password itself. The same walk's log records may not carry a hash or a
password either, even at DEBUG with ``TIMEBANK_DATABASE_ECHO`` on (the engines hide bound
parameters, so SQL logs and database error messages never show the values).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlalchemy import select

from app.core.observability import JsonLogFormatter
from app.main import create_app
from app.models.identity import User
from tests.conftest import make_settings
from tests.exchanges.helpers import exchange_body
from tests.factories import PASSWORD, Api, expect
from tests.ledger.helpers import partner_headers

pytestmark = pytest.mark.anyio

FORBIDDEN = ("argon2", "password_hash", PASSWORD)
FORBIDDEN_IN_LOGS = ("argon2", PASSWORD)  # column names in SQL are fine; values are not


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.json = JsonLogFormatter()
        self.plain = logging.Formatter("%(levelname)s %(name)s %(message)s %(args)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.json.format(record))
        self.lines.append(self.plain.format(record))
        self.lines.append(repr(record.__dict__))


@pytest.fixture
def logs() -> Iterator[Capture]:
    """Every record that reaches the loggers, at the levels the app itself configures.

    (A root logger forced to DEBUG would also show aiosqlite's and asyncpg's own debug lines,
    which print bound values; docs/security.md says not to run them at DEBUG in production.)
    """
    capture = Capture()
    names = ["", "timebank", "sqlalchemy", "uvicorn", "fastapi", "jose"]
    for name in names:
        logging.getLogger(name).addHandler(capture)
    try:
        yield capture
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(capture)


@pytest.fixture
async def app(database_url: str, logs: Capture) -> AsyncIterator[FastAPI]:
    """The app at its chattiest: DEBUG logs and SQL echo, with the capture already wired."""
    application = create_app(make_settings(database_url, log_level="DEBUG", database_echo=True))
    logging.getLogger("timebank").addHandler(logs)  # configure_logging replaced its handlers
    async with application.router.lifespan_context(application):
        yield application


async def test_no_response_and_no_log_line_carries_a_password_or_its_hash(
    client: AsyncClient, app: FastAPI, logs: Capture
) -> None:
    seen: list[Response] = []

    async def record(response: Response) -> None:
        await response.aread()
        seen.append(response)

    client.event_hooks["response"].append(record)
    api = Api(client, app)
    community, admin = await api.community()
    cid = community["id"]
    coordinator = await api.member(cid, admin, role="coordinator")
    alice = await api.member(cid, coordinator)
    bob = await api.member(cid, coordinator)

    # sign-in flows: the password grant, a wrong password, refresh, logout, a taken email
    pair = await api.token(alice.email)
    await client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": alice.email, "password": "wrong " + PASSWORD},
    )
    refreshed = expect(
        await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 200
    )
    await client.post("/v1/auth/logout", json={"refresh_token": refreshed["refresh_token"]})
    await client.post("/v1/users", json={"email": alice.email, "password": PASSWORD})
    await client.post("/v1/users", json={"email": "short@example.org", "password": "x"})

    # the rest of the API, as the people who use it
    partner = await partner_headers(client, cid, admin, ["members:read", "ledger:read"])
    expect(
        await client.post(
            f"/v1/communities/{cid}/exchanges",
            json=exchange_body([(alice, 60)], [(bob, None)], split="equal", mode="record"),
            headers=coordinator.headers,
        ),
        201,
    )
    await client.post(
        f"/v1/communities/{cid}/listings",
        json={"type": "offer", "title": "Gardening", "category": "gardening"},
        headers=alice.headers,
    )
    await client.post(
        f"/v1/communities/{cid}/transactions",
        json={
            "entries": [
                {"account_id": alice.account_id, "minutes": 15},
                {"account_id": bob.account_id, "minutes": -15},
            ]
        },
        headers={**coordinator.headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    await client.post(
        f"/v1/communities/{cid}/donations", json={"minutes": 10}, headers=alice.headers
    )
    for headers in (admin.headers, coordinator.headers, alice.headers, partner):
        for path in (
            "/v1/me",
            "/v1/me/pending",
            "/v1/communities",
            f"/v1/communities/{cid}",
            f"/v1/communities/{cid}/members",
            f"/v1/communities/{cid}/clients",
            f"/v1/communities/{cid}/transactions",
            f"/v1/communities/{cid}/exchanges",
            f"/v1/communities/{cid}/listings",
            f"/v1/communities/{cid}/fund",
            f"/v1/members/{alice.member_id}",
            f"/v1/members/{alice.member_id}/account",
            f"/v1/members/{alice.member_id}/thanks",
            f"/v1/accounts/{alice.account_id}/entries",
            f"/v1/communities/{cid}/network",
            "/openapi.json",
        ):
            await client.get(path, headers=headers)
    await client.patch(
        f"/v1/members/{alice.member_id}", json={"bio": "likes roses"}, headers=alice.headers
    )

    assert len(seen) > 80
    for response in seen:
        text = response.text.lower()
        for needle in FORBIDDEN:
            assert needle.lower() not in text, f"{response.request.url}: {needle!r} in the body"
        for name, value in response.headers.items():
            assert "argon2" not in value.lower(), f"{response.request.url}: header {name}"

    # The scan is not vacuous: the hashes exist, they are argon2id, and SQL was logged.
    async with app.state.sessionmaker() as session:
        hashes = list(await session.scalars(select(User.password_hash)))
    assert hashes
    assert all(h is None or h.startswith("$argon2id$") for h in hashes)
    assert any("INSERT INTO users" in line for line in logs.lines)
    assert any("timebank.access" in line for line in logs.lines)
    secrets = [*FORBIDDEN_IN_LOGS, *(h for h in hashes if h)]
    for line in logs.lines:
        for needle in secrets:
            assert needle.lower() not in line.lower(), f"{needle!r} logged: {line[:300]}"

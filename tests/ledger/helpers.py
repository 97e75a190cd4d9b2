"""Ledger test helpers: post through the API and read the books back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient, Response

from tests.factories import Actor, Api, expect
from tests.ledger.invariants import Snapshot, check_ledger_invariants, snapshot


async def post(
    client: AsyncClient,
    community_id: str,
    by: Actor,
    entries: list[tuple[str, int]],
    *,
    key: str | None = None,
    expected: int = 201,
    **fields: Any,
) -> Any:
    response = await client.post(
        f"/v1/communities/{community_id}/transactions",
        json={"entries": [{"account_id": a, "minutes": m} for a, m in entries], **fields},
        headers={**by.headers, "Idempotency-Key": key or str(uuid.uuid4())},
    )
    return expect(response, expected)


async def balance(client: AsyncClient, account_id: str, by: Actor) -> int:
    body = expect(await client.get(f"/v1/accounts/{account_id}", headers=by.headers), 200)
    return int(body["balance"])


def refused(response: Response, status: int, code: str) -> dict[str, Any]:
    """Assert an RFC 9457 refusal with this status and stable ``code``; return the document."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status, body
    assert body["type"].endswith(code), body
    return body


async def partner_headers(
    client: AsyncClient, community_id: str, admin: Actor, scopes: list[str]
) -> dict[str, str]:
    """A partner client of ``community_id`` with ``scopes``; its bearer headers."""
    created = expect(
        await client.post(
            f"/v1/communities/{community_id}/clients",
            json={"name": f"partner {uuid.uuid4().hex[:6]}", "scopes": scopes},
            headers=admin.headers,
        ),
        201,
    )
    token = expect(
        await client.post(
            "/v1/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": created["client_id"],
                "client_secret": created["client_secret"],
            },
        ),
        200,
    )
    return {"Authorization": f"Bearer {token['access_token']}"}


@dataclass
class Books:
    """A community with an admin, a coordinator and members, ready to post."""

    community: dict[str, Any]
    admin: Actor
    coordinator: Actor
    members: list[Actor]

    @property
    def id(self) -> str:
        return str(self.community["id"])

    @property
    def fund_account_id(self) -> str:
        return str(self.community["fund_account_id"])


async def open_books(api: Api, *, members: int = 3, logins: bool = True) -> Books:
    community, admin = await api.community()
    coordinator = await api.member(community["id"], admin, role="coordinator")
    people = [await api.member(community["id"], admin, with_login=logins) for _ in range(members)]
    return Books(community=community, admin=admin, coordinator=coordinator, members=people)


async def check_books(
    app: FastAPI, community_id: str | None = None, *, limits_unchanged: bool = False
) -> None:
    """Assert the ledger invariants in the database (of one community, or all)."""
    async with app.state.sessionmaker() as session:
        await check_ledger_invariants(
            session,
            community_id=uuid.UUID(community_id) if community_id else None,
            limits_unchanged=limits_unchanged,
        )


async def books_snapshot(app: FastAPI) -> Snapshot:
    async with app.state.sessionmaker() as session:
        return await snapshot(session)

"""Shared steps for the exchanges suites: a small community with every kind of caller, and a
snapshot of the books so each refusal can prove that nothing changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlalchemy import func, select

from app.models import (
    Account,
    Entry,
    Exchange,
    ExchangeEvent,
    ExchangeParty,
    IdempotencyRecord,
    Listing,
    Transaction,
)
from tests.factories import Actor, Api, expect, unique


def today() -> date:
    """The server's idea of today (it dates service in UTC)."""
    return datetime.now(UTC).date()


def days_ago(days: int) -> str:
    return (today() - timedelta(days=days)).isoformat()


def problem(response: Response, status: int, code: str) -> dict[str, Any]:
    """Assert an RFC 9457 refusal with this status and stable ``code``; return the document."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def exchange_body(
    providers: list[tuple[Actor, int]], receivers: list[tuple[Actor, int | None]], **extra: Any
) -> dict[str, Any]:
    return {
        "providers": [{"member_id": p.member_id, "minutes": m} for p, m in providers],
        "receivers": [
            {"member_id": r.member_id} if m is None else {"member_id": r.member_id, "minutes": m}
            for r, m in receivers
        ],
        "description": extra.pop("description", "Helped out"),
        "category": extra.pop("category", "gardening"),
        "occurred_on": extra.pop("occurred_on", today().isoformat()),
        **extra,
    }


@dataclass
class Community:
    """One time bank with a platform admin (``root``, who set it up), a coordinator and
    members made on demand."""

    api: Api
    id: str
    root: Actor
    coordinator: Actor
    members: list[Actor] = field(default_factory=list)

    @property
    def client(self) -> AsyncClient:
        return self.api.client

    async def member(self, **kwargs: Any) -> Actor:
        actor = await self.api.member(self.id, self.root, **kwargs)
        self.members.append(actor)
        return actor

    async def propose(
        self,
        by: Actor | dict[str, str],
        providers: list[tuple[Actor, int]],
        receivers: list[tuple[Actor, int | None]],
        **extra: Any,
    ) -> dict[str, Any]:
        headers = by.headers if isinstance(by, Actor) else by
        body: dict[str, Any] = expect(
            await self.client.post(
                f"/v1/communities/{self.id}/exchanges",
                json=exchange_body(providers, receivers, **extra),
                headers=headers,
            ),
            201,
        )
        return body

    async def act(
        self, exchange_id: str, action: str, by: Actor | dict[str, str], **body: Any
    ) -> Response:
        headers = by.headers if isinstance(by, Actor) else by
        return await self.client.post(
            f"/v1/exchanges/{exchange_id}/{action}", json=body, headers=headers
        )

    async def do(
        self, exchange_id: str, action: str, by: Actor | dict[str, str], **body: Any
    ) -> dict[str, Any]:
        result: dict[str, Any] = expect(await self.act(exchange_id, action, by, **body), 200)
        return result

    async def exchange(self, exchange_id: str) -> dict[str, Any]:
        body: dict[str, Any] = expect(
            await self.client.get(f"/v1/exchanges/{exchange_id}", headers=self.root.headers), 200
        )
        return body

    async def exchanges(self) -> list[dict[str, Any]]:
        body = expect(
            await self.client.get(
                f"/v1/communities/{self.id}/exchanges",
                params={"limit": 200},
                headers=self.root.headers,
            ),
            200,
        )
        items: list[dict[str, Any]] = body["items"]
        return items

    async def balance(self, who: Actor) -> int:
        body = expect(
            await self.client.get(f"/v1/accounts/{who.account_id}", headers=self.root.headers),
            200,
        )
        return int(body["balance"])

    async def balances(self, *people: Actor) -> list[int]:
        return [await self.balance(p) for p in people]

    async def fund(self) -> int:
        body = expect(
            await self.client.get(f"/v1/communities/{self.id}/fund", headers=self.root.headers),
            200,
        )
        return int(body["account"]["balance"])

    async def books(self) -> dict[str, Any]:
        """Everything a refusal must leave alone, read straight from the database (every
        community): accounts, postings, exchanges with their parties and events, listings,
        idempotency records."""
        return await books(self.api.app)

    async def patch(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = expect(
            await self.client.patch(
                f"/v1/communities/{self.id}", json=fields, headers=self.root.headers
            ),
            200,
        )
        return body

    async def set_status(self, who: Actor, status: str) -> None:
        expect(
            await self.client.patch(
                f"/v1/members/{who.member_id}", json={"status": status}, headers=self.root.headers
            ),
            200,
        )

    async def partner(self, *scopes: str) -> dict[str, str]:
        """Bearer headers for a partner service registered here with ``scopes``."""
        created = expect(
            await self.client.post(
                f"/v1/communities/{self.id}/clients",
                json={"name": unique("partner "), "scopes": list(scopes)},
                headers=self.root.headers,
            ),
            201,
        )
        token = expect(
            await self.client.post(
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

    async def applicant(self) -> Actor:
        """Someone who asked to join and is still pending."""
        user = await self.api.user()
        user.member = expect(
            await self.client.post(
                f"/v1/communities/{self.id}/members",
                json={"display_name": unique("joiner "), "kind": "citizen"},
                headers=user.headers,
            ),
            201,
        )
        assert user.member["status"] == "pending"
        return user


async def books(app: FastAPI) -> dict[str, Any]:
    async with app.state.sessionmaker() as session:

        async def rows(*columns: Any) -> list[tuple[Any, ...]]:
            result = await session.execute(select(*columns).order_by(columns[0]))
            return [tuple(row) for row in result.all()]

        async def count(model: Any) -> int:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

        return {
            "accounts": await rows(Account.id, Account.balance, Account.version),
            "transactions": await count(Transaction),
            "entries": await count(Entry),
            "exchanges": await rows(
                Exchange.id,
                Exchange.status,
                Exchange.resolution,
                Exchange.needs_coordinator,
                Exchange.transaction_id,
                Exchange.reversal_transaction_id,
            ),
            "parties": await rows(
                ExchangeParty.id, ExchangeParty.confirmed_at, ExchangeParty.thanks
            ),
            "events": await count(ExchangeEvent),
            "listings": await rows(
                Listing.id, Listing.status, Listing.title, Listing.category, Listing.tag_index
            ),
            "idempotency": await count(IdempotencyRecord),
        }


async def community(client: AsyncClient, app: FastAPI, **fields: Any) -> Community:
    api = Api(client, app)
    created, root = await api.community(**fields)
    coordinator = await api.member(created["id"], root, role="coordinator")
    return Community(api=api, id=created["id"], root=root, coordinator=coordinator)

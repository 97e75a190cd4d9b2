"""Two communities side by side: the attacker's (A) and the victim's (B), with hours in B."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.core.conftest import ServeApp, _serve
from tests.exchanges.helpers import books, exchange_body
from tests.factories import Actor, Api, expect, unique
from tests.ledger.helpers import partner_headers


@dataclass
class World:
    api: Api
    a: dict[str, Any]
    a_admin: Actor
    a_coordinator: Actor
    a_member: Actor
    a_partner: dict[str, str]
    b: dict[str, Any]
    b_admin: Actor
    b_member: Actor
    b_other: Actor
    b_transaction_id: str
    b_exchange_id: str
    b_listing_id: str

    def attackers(self) -> dict[str, dict[str, str]]:
        """Everyone in A who might try: a member, a coordinator, A's admin, A's partner."""
        return {
            "member": self.a_member.headers,
            "coordinator": self.a_coordinator.headers,
            "admin": self.a_admin.headers,
            "partner": self.a_partner,
        }


async def snapshot(app: FastAPI) -> dict[str, Any]:
    """Every row that holds hours, exchanges, listings or members, for before/after checks."""
    return await books(app)


@pytest.fixture
def serve() -> ServeApp:
    """``async with serve(app) as client``, as in tests/core."""
    return _serve


@pytest.fixture
async def world(client: AsyncClient, app: FastAPI) -> World:
    api = Api(client, app)
    # Separate founders: A's admin is not a platform admin of B, nor of anything else.
    a, a_root = await api.community()
    a_admin = await api.member(a["id"], a_root, role="admin")
    a_coordinator = await api.member(a["id"], a_root, role="coordinator")
    a_member = await api.member(a["id"], a_root)
    a_partner = await partner_headers(
        client,
        a["id"],
        a_root,
        ["members:read", "members:write", "ledger:read", "ledger:write"],
    )
    b, b_admin = await api.community()
    b_member = await api.member(b["id"], b_admin)
    b_other = await api.member(b["id"], b_admin)
    posted = expect(
        await client.post(
            f"/v1/communities/{b['id']}/transactions",
            json={
                "entries": [
                    {"account_id": b_member.account_id, "minutes": 90},
                    {"account_id": b_other.account_id, "minutes": -90},
                ],
                "memo": "B's own business",
            },
            headers={**b_admin.headers, "Idempotency-Key": str(uuid.uuid4())},
        ),
        201,
    )
    exchange = expect(
        await client.post(
            f"/v1/communities/{b['id']}/exchanges",
            json=exchange_body([(b_member, 30)], [(b_other, None)], split="equal"),
            headers=b_member.headers,
        ),
        201,
    )
    listing = expect(
        await client.post(
            f"/v1/communities/{b['id']}/listings",
            json={"type": "offer", "title": unique("Secret B offer "), "category": "gardening"},
            headers=b_member.headers,
        ),
        201,
    )
    return World(
        api=api,
        a=a,
        a_admin=a_admin,
        a_coordinator=a_coordinator,
        a_member=a_member,
        a_partner=a_partner,
        b=b,
        b_admin=b_admin,
        b_member=b_member,
        b_other=b_other,
        b_transaction_id=posted["id"],
        b_exchange_id=exchange["id"],
        b_listing_id=listing["id"],
    )

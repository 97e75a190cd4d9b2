"""Tenancy isolation: nobody in community A reads or moves community B's hours.

The attackers are A's member, coordinator, admin and a partner client holding every ledger and
member scope; none is a platform admin. They know B's ids (as if guessed or leaked) and try
every read and every write that could reach B: directly, through A's own routes naming B's
accounts and members, and in batches. Each must be refused (403/404/422, a problem document)
or answer nothing of B's, and B's books must end exactly as they began.

The per-route role matrices live in tests/identity/test_authorisation.py,
tests/ledger/test_authorisation.py and tests/exchanges/test_authorisation.py; this suite is the
cross-community view of the same guards.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response

from tests.exchanges.helpers import exchange_body
from tests.security.conftest import World, snapshot

pytestmark = pytest.mark.anyio

ATTACKERS = ["member", "coordinator", "admin", "partner"]
REFUSED = {401, 403, 404, 409, 422}


def refused(response: Response, what: str) -> None:
    assert response.status_code in REFUSED, f"{what}: {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json"), what


def reads(w: World) -> list[str]:
    b, acc, member = w.b["id"], w.b_member.account_id, w.b_member.member_id
    # A community's profile (GET /v1/communities/{id}) is a public directory entry for any
    # signed-in user, so that people can find a time bank and ask to join: no hours in it.
    return [
        f"/v1/communities/{b}/members",
        f"/v1/communities/{b}/transactions",
        f"/v1/communities/{b}/transactions?account_id={acc}",
        f"/v1/communities/{b}/listings",
        f"/v1/communities/{b}/exchanges",
        f"/v1/communities/{b}/fund",
        f"/v1/communities/{b}/categories",
        f"/v1/communities/{b}/clients",
        f"/v1/communities/{b}/network",
        f"/v1/communities/{b}/network/metrics",
        f"/v1/communities/{b}/reports/activity",
        f"/v1/communities/{b}/reports/coproduction",
        f"/v1/accounts/{acc}",
        f"/v1/accounts/{acc}/entries",
        f"/v1/accounts/{acc}/entries?as_of=2100-01-01T00:00:00Z",
        f"/v1/members/{member}",
        f"/v1/members/{member}/account",
        f"/v1/members/{member}/connections",
        f"/v1/members/{member}/network",
        f"/v1/members/{member}/suggestions",
        f"/v1/members/{member}/thanks",
        f"/v1/transactions/{w.b_transaction_id}",
        f"/v1/exchanges/{w.b_exchange_id}",
        f"/v1/listings/{w.b_listing_id}",
    ]


@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_nobody_in_a_reads_anything_of_b(
    client: AsyncClient, world: World, attacker: str
) -> None:
    headers = world.attackers()[attacker]
    for path in reads(world):
        refused(await client.get(path, headers=headers), f"GET {path}")


@pytest.mark.parametrize("attacker", ["coordinator", "partner"])
async def test_filters_in_a_naming_b_ids_find_nothing(
    client: AsyncClient, world: World, attacker: str
) -> None:
    headers = world.attackers()[attacker]
    a = world.a["id"]
    paths = [
        f"/v1/communities/{a}/transactions?account_id={world.b_member.account_id}",
        f"/v1/communities/{a}/exchanges?member_id={world.b_member.member_id}",
        f"/v1/communities/{a}/listings?owner_member_id={world.b_member.member_id}",
    ]
    for path in paths:
        response = await client.get(path, headers=headers)
        if response.status_code == 200:
            assert response.json()["items"] == [], path
        else:
            refused(response, f"GET {path}")


def writes(w: World) -> list[tuple[str, str, dict[str, Any]]]:
    a, b = w.a["id"], w.b["id"]
    mine, theirs, other = w.a_member.account_id, w.b_member.account_id, w.b_other.account_id

    def entries(*pairs: tuple[str, int]) -> list[dict[str, Any]]:
        return [{"account_id": acc, "minutes": m} for acc, m in pairs]

    return [
        # B's own routes
        ("POST", f"/v1/communities/{b}/transactions", {"entries": entries((theirs, -60), (other, 60))}),
        (
            "POST",
            f"/v1/communities/{b}/transactions/batch",
            {"transactions": [{"entries": entries((theirs, -60), (other, 60))}]},
        ),
        ("POST", f"/v1/transactions/{w.b_transaction_id}/reversal", {}),
        ("PATCH", f"/v1/accounts/{theirs}", {"min_balance": -100_000}),
        ("PATCH", f"/v1/members/{w.b_member.member_id}", {"status": "suspended"}),
        ("PATCH", f"/v1/members/{w.b_admin.member_id}", {"role": "member"}),
        ("PATCH", f"/v1/listings/{w.b_listing_id}", {"title": "defaced"}),
        ("PATCH", f"/v1/communities/{b}", {"name": "defaced"}),
        ("POST", f"/v1/communities/{b}/donations", {"minutes": 30}),
        ("POST", f"/v1/communities/{b}/grants", {"member_id": w.a_member.member_id, "minutes": 30, "reason": "x"}),
        ("POST", f"/v1/communities/{b}/listings", {"type": "offer", "title": "x", "category": "gardening"}),
        ("POST", f"/v1/communities/{b}/exchanges", exchange_body([(w.b_member, 30)], [(w.b_other, None)], split="equal")),
        ("POST", f"/v1/communities/{b}/clients", {"name": "spy", "scopes": ["ledger:read"]}),
        # (A signed-in user may ask to join B: that request is pending and grants nothing
        # until B's coordinator approves it; tests/identity covers it.)
        ("PUT", f"/v1/communities/{b}/categories", {"categories": ["defaced"]}),
        *[
            ("POST", f"/v1/exchanges/{w.b_exchange_id}/{action}", body)
            for action, body in [
                ("confirm", {}),
                ("reject", {"note": "no"}),
                ("cancel", {"note": "no"}),
                ("dispute", {"note": "no"}),
                ("resolve", {"outcome": "cancel", "note": "no"}),
            ]
        ],
        # A's own routes naming B's accounts and members
        ("POST", f"/v1/communities/{a}/transactions", {"entries": entries((mine, 60), (theirs, -60))}),
        ("POST", f"/v1/communities/{a}/transactions", {"entries": entries((theirs, -60), (other, 60))}),
        (
            "POST",
            f"/v1/communities/{a}/transactions/batch",
            {"atomic": True, "transactions": [{"entries": entries((mine, 60), (theirs, -60))}]},
        ),
        (
            "POST",
            f"/v1/communities/{a}/transactions/batch",
            {"atomic": False, "transactions": [{"entries": entries((mine, 60), (theirs, -60))}]},
        ),
        ("POST", f"/v1/communities/{a}/donations", {"minutes": 30, "member_id": w.b_member.member_id}),
        ("POST", f"/v1/communities/{a}/grants", {"member_id": w.b_member.member_id, "minutes": 30, "reason": "x"}),
        ("POST", f"/v1/communities/{a}/exchanges", exchange_body([(w.b_member, 30)], [(w.a_member, None)], split="equal")),
        ("POST", f"/v1/communities/{a}/exchanges", exchange_body([(w.a_member, 30)], [(w.b_member, None)], split="equal")),
        (
            "POST",
            f"/v1/communities/{a}/exchanges",
            {**exchange_body([(w.a_member, 30)], [(w.a_coordinator, None)], split="equal"), "listing_id": w.b_listing_id},
        ),
        (
            "POST",
            f"/v1/communities/{a}/listings",
            {"type": "offer", "title": "x", "category": "gardening", "owner_member_id": w.b_member.member_id},
        ),
    ]  # fmt: skip


@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_nobody_in_a_moves_or_changes_anything_of_b(
    client: AsyncClient, app: FastAPI, world: World, attacker: str
) -> None:
    headers = world.attackers()[attacker]
    before = await snapshot(app)
    for method, path, body in writes(world):
        response = await client.request(
            method,
            path,
            json=body,
            headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
        )
        what = f"{method} {path} {body}"
        if response.status_code == 200 and path.endswith("/batch"):
            # A non-atomic batch answers per item: every item refused, nothing posted.
            result = response.json()
            assert result["posted"] == 0, what
            assert all(item["status"] == "refused" for item in result["results"]), what
            continue
        refused(response, what)
    after = await snapshot(app)
    # Idempotency records of refusals may be kept (a retry replays the refusal); nothing else.
    before.pop("idempotency")
    after.pop("idempotency")
    assert after == before


async def test_b_still_sees_its_own_books(client: AsyncClient, world: World) -> None:
    """The refusals above are about who asks, not broken routes: B's admin reads it all."""
    for path in reads(world):
        if path.endswith("/clients") or "/reports/" in path:
            continue
        response = await client.get(path, headers=world.b_admin.headers)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"

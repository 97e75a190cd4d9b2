"""Who may use each ledger route: every route against every kind of caller.

Members read their own account and the transactions that touched it; coordinators and admins
read and post for their community; only admins change limits; partner clients act within
their scopes; platform admins everywhere. Callers from another community learn nothing: 404
for anything addressed by id.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response

from tests.factories import Api
from tests.ledger.helpers import check_books, open_books, partner_headers, post

pytestmark = pytest.mark.anyio

CALLERS = [
    "owner",
    "other_member",
    "coordinator",
    "admin",
    "platform_admin",
    "partner_read",
    "partner_write",
    "partner_read_write",
    "partner_unscoped",
    "foreign_admin",
    "foreign_partner",
    "anonymous",
]

OK = (200, "")
CREATED = (201, "")
ROLE = (403, "insufficient_role")
SCOPE = (403, "insufficient_scope")
NOT_A_MEMBER = (403, "not_a_member")
ANONYMOUS = (401, "invalid_token")


def _expected(
    *,
    owner: tuple[int, str],
    other_member: tuple[int, str],
    staff: tuple[int, str],
    admin: tuple[int, str],
    reader: tuple[int, str],
    writer: tuple[int, str],
    read_write: tuple[int, str],
    foreign_admin: tuple[int, str],
    foreign_partner: tuple[int, str],
) -> dict[str, tuple[int, str]]:
    return {
        "owner": owner,
        "other_member": other_member,
        "coordinator": staff,
        "admin": admin,
        "platform_admin": admin,
        "partner_read": reader,
        "partner_write": writer,
        "partner_read_write": read_write,
        "partner_unscoped": SCOPE,
        "foreign_admin": foreign_admin,
        "foreign_partner": foreign_partner,
        "anonymous": ANONYMOUS,
    }


@dataclass
class Route:
    name: str
    call: Callable[[str, dict[str, str]], Awaitable[Response]]
    expected: dict[str, tuple[int, str]]


async def test_every_ledger_route_admits_exactly_the_right_callers(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    books = await open_books(api, members=3)
    owner, counterparty, other_member = books.members
    community_admin = await api.member(books.id, books.admin, role="admin")
    other_books = await open_books(api, members=0)
    foreign_admin = await api.member(other_books.id, other_books.admin, role="admin")
    headers: dict[str, dict[str, str]] = {
        "owner": owner.headers,
        "other_member": other_member.headers,
        "coordinator": books.coordinator.headers,
        "admin": community_admin.headers,
        "platform_admin": (await api.platform_admin()).headers,
        "partner_read": await partner_headers(client, books.id, books.admin, ["ledger:read"]),
        "partner_write": await partner_headers(client, books.id, books.admin, ["ledger:write"]),
        "partner_read_write": await partner_headers(
            client, books.id, books.admin, ["ledger:read", "ledger:write"]
        ),
        "partner_unscoped": await partner_headers(
            client, books.id, books.admin, ["community:read"]
        ),
        "foreign_admin": foreign_admin.headers,
        "foreign_partner": await partner_headers(
            client, other_books.id, other_books.admin, ["ledger:read", "ledger:write"]
        ),
        "anonymous": {},
    }
    a, b = owner.account_id, counterparty.account_id
    shared = await post(client, books.id, books.admin, [(a, 10), (b, -10)])
    # Each caller that may reverse needs a transaction of its own to reverse.
    to_reverse = {
        caller: (await post(client, books.id, books.admin, [(a, 1), (b, -1)]))["id"]
        for caller in CALLERS
    }
    entries = [{"account_id": a, "minutes": 1}, {"account_id": b, "minutes": -1}]

    def keyed(h: dict[str, str]) -> dict[str, str]:
        return {**h, "Idempotency-Key": str(uuid.uuid4())}

    account_read = _expected(
        owner=OK,
        other_member=ROLE,
        staff=OK,
        admin=OK,
        reader=OK,
        writer=SCOPE,
        read_write=OK,
        foreign_admin=(404, "account_not_found"),
        foreign_partner=(404, "account_not_found"),
    )
    routes = [
        Route(
            "GET /v1/accounts/{account_id}",
            lambda _, h: client.get(f"/v1/accounts/{a}", headers=h),
            account_read,
        ),
        Route(
            "GET /v1/accounts/{account_id}/entries",
            lambda _, h: client.get(f"/v1/accounts/{a}/entries", headers=h),
            account_read,
        ),
        Route(
            "GET /v1/members/{member_id}/account",
            lambda _, h: client.get(f"/v1/members/{owner.member_id}/account", headers=h),
            {
                **account_read,
                "foreign_admin": (404, "member_not_found"),
                "foreign_partner": (404, "member_not_found"),
            },
        ),
        Route(
            "PATCH /v1/accounts/{account_id}",
            lambda _, h: client.patch(f"/v1/accounts/{a}", json={"reason": "audit"}, headers=h),
            _expected(
                owner=ROLE,
                other_member=ROLE,
                staff=ROLE,
                admin=OK,
                reader=SCOPE,
                writer=SCOPE,
                read_write=SCOPE,
                foreign_admin=(404, "account_not_found"),
                foreign_partner=(404, "account_not_found"),
            ),
        ),
        Route(
            "POST /v1/communities/{community_id}/transactions",
            lambda _, h: client.post(
                f"/v1/communities/{books.id}/transactions",
                json={"entries": entries},
                headers=keyed(h),
            ),
            _expected(
                owner=ROLE,
                other_member=ROLE,
                staff=CREATED,
                admin=CREATED,
                reader=SCOPE,
                writer=CREATED,
                read_write=CREATED,
                foreign_admin=NOT_A_MEMBER,
                foreign_partner=(404, "community_not_found"),
            ),
        ),
        Route(
            "POST /v1/communities/{community_id}/transactions/batch",
            lambda _, h: client.post(
                f"/v1/communities/{books.id}/transactions/batch",
                json={"transactions": [{"entries": entries}]},
                headers=keyed(h),
            ),
            _expected(
                owner=ROLE,
                other_member=ROLE,
                staff=OK,
                admin=OK,
                reader=SCOPE,
                writer=OK,
                read_write=OK,
                foreign_admin=NOT_A_MEMBER,
                foreign_partner=(404, "community_not_found"),
            ),
        ),
        Route(
            "GET /v1/communities/{community_id}/transactions",
            lambda _, h: client.get(f"/v1/communities/{books.id}/transactions", headers=h),
            _expected(
                owner=ROLE,
                other_member=ROLE,
                staff=OK,
                admin=OK,
                reader=OK,
                writer=SCOPE,
                read_write=OK,
                foreign_admin=NOT_A_MEMBER,
                foreign_partner=(404, "community_not_found"),
            ),
        ),
        Route(
            "GET /v1/transactions/{transaction_id}",
            lambda _, h: client.get(f"/v1/transactions/{shared['id']}", headers=h),
            _expected(
                owner=OK,
                other_member=(404, "transaction_not_found"),
                staff=OK,
                admin=OK,
                reader=OK,
                writer=SCOPE,
                read_write=OK,
                foreign_admin=(404, "transaction_not_found"),
                foreign_partner=(404, "transaction_not_found"),
            ),
        ),
        Route(
            "POST /v1/transactions/{transaction_id}/reversal",
            lambda caller, h: client.post(
                f"/v1/transactions/{to_reverse[caller]}/reversal", headers=h
            ),
            _expected(
                owner=ROLE,  # it touched their account, so they see it, but may not reverse
                other_member=(404, "transaction_not_found"),
                staff=CREATED,
                admin=CREATED,
                reader=SCOPE,
                writer=CREATED,
                read_write=CREATED,
                foreign_admin=(404, "transaction_not_found"),
                foreign_partner=(404, "transaction_not_found"),
            ),
        ),
    ]

    mismatches = []
    for route in routes:
        assert set(route.expected) == set(CALLERS), route.name
        for caller in CALLERS:
            response = await route.call(caller, headers[caller])
            code = "" if response.status_code < 300 else response.json().get("code", "")
            if (response.status_code, code) != route.expected[caller]:
                mismatches.append(
                    f"{route.name} as {caller}: got {response.status_code} {code!r}, "
                    f"expected {route.expected[caller]}"
                )
            elif response.status_code >= 400:
                assert response.headers["content-type"].startswith("application/problem+json")
    assert not mismatches, "\n".join(mismatches)
    await check_books(app, limits_unchanged=True)

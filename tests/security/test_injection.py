"""SQL injection attempts in every text filter, cursor and id: 4xx or nothing found, never 5xx.

Every query is built with bound parameters (SQLAlchemy Core/ORM, no string formatting), so a
payload is only ever a value compared with stored values. These tests send the classic payloads
to each text input a client controls and check the answer is a 4xx problem document or an
empty list, and that nothing in the database changed.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.security.conftest import World, snapshot

pytestmark = pytest.mark.anyio

PAYLOADS = [
    "' OR '1'='1",
    "' OR 1=1 --",
    '" OR ""="',
    "'; DROP TABLE entries; --",
    "1; DELETE FROM accounts",
    "' UNION SELECT password_hash, email FROM users --",
    "%' OR '%'='",
    "%",
    "_",
    "\\",
    "') OR ('a'='a",
    "1' AND SLEEP(1) --",
    "'||pg_sleep(1)--",
    "$1",
    "?",
    "NULL",
    "\x00",
    "☃' OR 'x'='x",
]


def queries(w: World) -> list[tuple[str, str]]:
    """(path, parameter) for each text input of the list routes, as B's admin sees them."""
    b, member, acc = w.b["id"], w.b_member.member_id, w.b_member.account_id
    listing_filters = ["q", "category", "tag", "type", "owner_kind", "owner_member_id", "status"]
    return [
        *[(f"/v1/communities/{b}/listings", p) for p in listing_filters],
        *[(f"/v1/communities/{b}/members", p) for p in ("status", "kind", "role", "cursor")],
        *[(f"/v1/communities/{b}/exchanges", p) for p in ("status", "member_id", "cursor")],
        *[(f"/v1/communities/{b}/transactions", p) for p in ("account_id", "kind", "cursor")],
        (f"/v1/communities/{b}/transactions", "from"),
        (f"/v1/accounts/{acc}/entries", "cursor"),
        (f"/v1/accounts/{acc}/entries", "as_of"),
        (f"/v1/communities/{b}/network", "kind"),
        (f"/v1/communities/{b}/network", "format"),
        (f"/v1/communities/{b}/network/path", "from"),
        (f"/v1/communities/{b}/reports/activity", "period"),
        (f"/v1/members/{member}/connections", "cursor"),
        (f"/v1/members/{member}/thanks", "cursor"),
        ("/v1/communities", "cursor"),
        ("/v1/me/pending", "cursor"),
        ("/v1/admin/reconciliations", "cursor"),
    ]


async def test_injection_in_filters_and_cursors_finds_nothing_and_changes_nothing(
    client: AsyncClient, app: FastAPI, world: World
) -> None:
    before = await snapshot(app)
    headers = world.b_admin.headers  # a platform admin: every route answers, nothing is 403
    for path, parameter in queries(world):
        for payload in PAYLOADS:
            response = await client.get(path, params={parameter: payload}, headers=headers)
            what = f"GET {path}?{parameter}={payload!r}"
            assert response.status_code < 500, f"{what}: {response.text}"
            if response.status_code == 200:
                body = response.json()
                if parameter == "q" and not any(c.isalnum() for c in payload):
                    continue  # a search with no words in it filters nothing, by design
                assert body.get("items", []) == [], f"{what}: {body}"
            else:
                assert 400 <= response.status_code < 500, what
                assert response.headers["content-type"].startswith("application/problem+json")
    assert await snapshot(app) == before


async def test_injection_in_path_ids_is_a_404(client: AsyncClient, world: World) -> None:
    templates = [
        "/v1/accounts/{}",
        "/v1/accounts/{}/entries",
        "/v1/members/{}",
        "/v1/members/{}/account",
        "/v1/transactions/{}",
        "/v1/exchanges/{}",
        "/v1/listings/{}",
        "/v1/communities/{}/members",
        "/v1/admin/reconciliations/{}",
    ]
    for template in templates:
        for payload in PAYLOADS:
            path = template.format(quote(payload, safe=""))
            response = await client.get(path, headers=world.b_admin.headers)
            assert response.status_code in {404, 422}, f"{path}: {response.text}"


async def test_injection_in_bodies_is_stored_as_text_or_refused(
    client: AsyncClient, app: FastAPI, world: World
) -> None:
    """A payload in a free-text field is just text: stored verbatim and read back verbatim."""
    payload = "Robert'); DROP TABLE listings; --"
    created = await client.post(
        f"/v1/communities/{world.b['id']}/listings",
        json={"type": "offer", "title": payload, "category": "gardening", "tags": [payload[:30]]},
        headers=world.b_member.headers,
    )
    assert created.status_code in {201, 422}, created.text
    if created.status_code == 201:
        assert created.json()["title"] == payload
        found = await client.get(
            f"/v1/communities/{world.b['id']}/listings",
            params={"q": "DROP TABLE"},
            headers=world.b_member.headers,
        )
        assert [item["title"] for item in found.json()["items"]] == [payload]
    # the listings table is still there, with B's other listing in it
    listed = await client.get(
        f"/v1/communities/{world.b['id']}/listings", headers=world.b_member.headers
    )
    assert listed.status_code == 200
    assert world.b_listing_id in {item["id"] for item in listed.json()["items"]}


async def test_nul_characters_are_refused_before_they_reach_the_database(
    client: AsyncClient, app: FastAPI, world: World
) -> None:
    """PostgreSQL cannot store NUL in text or jsonb: a NUL anywhere is a 4xx, never a 500."""
    before = await snapshot(app)
    b = world.b["id"]
    attempts = [
        ("POST", f"/v1/communities/{b}/listings", {"type": "offer", "title": "a\x00b", "category": "gardening"}),
        ("POST", f"/v1/communities/{b}/listings", {"type": "offer", "title": "ok", "category": "gardening", "tags": ["\x00"]}),
        ("PATCH", f"/v1/members/{world.b_member.member_id}", {"bio": "\x00"}),
        (
            "POST",
            f"/v1/communities/{b}/transactions",
            {
                "entries": [
                    {"account_id": world.b_member.account_id, "minutes": 5},
                    {"account_id": world.b_other.account_id, "minutes": -5},
                ],
                "details": {"note\x00": "x", "nested": ["\x00"]},
            },
        ),
        ("POST", "/v1/users", {"email": "nul\x00@example.org", "password": "a long enough \x00 password"}),
        # Nested models check their own fields: an entry inside a transaction inside a batch.
        (
            "POST",
            f"/v1/communities/{b}/transactions",
            {"entries": [{"account_id": "a\x00", "minutes": 5}, {"account_id": world.b_other.account_id, "minutes": -5}]},
        ),
        (
            "POST",
            f"/v1/communities/{b}/transactions/batch",
            {"transactions": [{"entries": [{"account_id": world.b_member.account_id, "minutes": 5}, {"account_id": world.b_other.account_id, "minutes": -5}], "memo": "ok"}, {"entries": [{"account_id": world.b_member.account_id, "minutes": 5}, {"account_id": world.b_other.account_id, "minutes": -5}], "details": {"deep": [{"x": "\x00"}]}}]},
        ),
        (
            "POST",
            f"/v1/communities/{b}/transactions/batch",
            {"atomic": False, "transactions": [{"entries": [{"account_id": world.b_member.account_id, "minutes": 5}, {"account_id": world.b_other.account_id, "minutes": -5}], "memo": "\x00"}]},
        ),
    ]  # fmt: skip
    for method, path, body in attempts:
        response = await client.request(
            method, path, json=body, headers={**world.b_admin.headers, "Idempotency-Key": "k1"}
        )
        assert 400 <= response.status_code < 500, f"{method} {path}: {response.text}"
    for form in (
        {"grant_type": "password", "username": "nul\x00@example.org", "password": "x"},
        {"grant_type": "client_credentials", "client_id": "\x00", "client_secret": "\x00"},
    ):
        response = await client.post("/v1/auth/token", data=form)
        assert 400 <= response.status_code < 500, response.text
    response = await client.post("/v1/auth/refresh", json={"refresh_token": "a\x00b"})
    assert 400 <= response.status_code < 500, response.text
    after = await snapshot(app)
    before.pop("idempotency")
    after.pop("idempotency")
    assert after == before

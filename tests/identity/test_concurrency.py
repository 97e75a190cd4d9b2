"""Rules that must hold when requests race (real parallel connections; on PostgreSQL the
database runs them at once, on SQLite one writer waits for the other)."""

from __future__ import annotations

import asyncio

import pytest
from httpx import AsyncClient

from tests.factories import PASSWORD, IdentityApi, expect

pytestmark = pytest.mark.anyio


async def test_two_admins_stepping_down_at_once_leave_one(
    client: AsyncClient, api: IdentityApi
) -> None:
    for _ in range(5):
        community, first = await api.community()
        second = await api.member(community["id"], first, role="admin")
        responses = await asyncio.gather(
            *(
                client.patch(
                    f"/v1/members/{admin.member_id}", json={"role": "member"}, headers=admin.headers
                )
                for admin in (first, second)
            )
        )
        assert sorted(r.status_code for r in responses) == [200, 409]
        admins = expect(
            await client.get(
                f"/v1/communities/{community['id']}/members",
                params={"role": "admin", "status": "active"},
                headers=first.headers,
            ),
            200,
        )
        assert len(admins["items"]) == 1


async def test_one_email_signs_up_once_under_a_race(client: AsyncClient) -> None:
    responses = await asyncio.gather(
        *(
            client.post("/v1/users", json={"email": "race@example.org", "password": PASSWORD})
            for _ in range(4)
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"email_taken"}


async def test_one_join_request_per_person_under_a_race(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, _ = await api.community()
    user = await api.user()
    responses = await asyncio.gather(
        *(
            client.post(
                f"/v1/communities/{community['id']}/members",
                json={"display_name": "Eager", "kind": "citizen"},
                headers=user.headers,
            )
            for _ in range(4)
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
    me = expect(await client.get("/v1/me", headers=user.headers), 200)
    assert len(me["memberships"]) == 1

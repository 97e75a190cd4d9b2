from __future__ import annotations

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.factories import Api, expect

pytestmark = pytest.mark.anyio


async def test_a_coordinator_builds_a_community_and_a_user_joins(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    coordinator = await api.member(community["id"], admin, role="coordinator", kind="professional")

    joiner = await api.user()
    request = expect(
        await client.post(
            f"/v1/communities/{community['id']}/members",
            json={"display_name": "Joan", "kind": "citizen", "skills": ["Gardening ", "gardening"]},
            headers=joiner.headers,
        ),
        201,
    )
    assert request["status"] == "pending"
    assert request["skills"] == ["gardening"]

    approved = expect(
        await client.patch(
            f"/v1/members/{request['id']}", json={"status": "active"}, headers=coordinator.headers
        ),
        200,
    )
    assert approved["status"] == "active"
    assert approved["joined_at"] is not None

    me = expect(await client.get("/v1/me", headers=joiner.headers), 200)
    assert [m["status"] for m in me["memberships"]] == ["active"]

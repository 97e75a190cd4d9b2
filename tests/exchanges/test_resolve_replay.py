"""Resolving a dispute by reversal moves hours, so a retried resolve must not reverse twice."""

from __future__ import annotations

from datetime import date

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.factories import Api, expect

pytestmark = pytest.mark.anyio


async def test_a_retried_resolve_with_its_key_replays_the_first_answer(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    cid = community["id"]
    giver = await api.member(cid, admin)
    taker = await api.member(cid, admin)
    recorded = expect(
        await client.post(
            f"/v1/communities/{cid}/exchanges",
            json={
                "providers": [{"member_id": giver.member_id, "minutes": 30}],
                "receivers": [{"member_id": taker.member_id, "minutes": 30}],
                "mode": "record",
                "description": "Shopping run",
                "category": "shopping",
                "occurred_on": date.today().isoformat(),
            },
            headers=admin.headers,
        ),
        201,
    )
    expect(
        await client.post(
            f"/v1/exchanges/{recorded['id']}/dispute",
            json={"note": "Never happened"},
            headers=taker.headers,
        ),
        200,
    )
    headers = {**admin.headers, "Idempotency-Key": "resolve-1"}
    body = {"outcome": "reversed", "note": "Agreed"}
    first = await client.post(f"/v1/exchanges/{recorded['id']}/resolve", json=body, headers=headers)
    second = await client.post(
        f"/v1/exchanges/{recorded['id']}/resolve", json=body, headers=headers
    )
    assert first.status_code == second.status_code == 200
    assert second.headers["Idempotency-Replayed"] == "true"
    assert first.json() == second.json()
    account = expect(
        await client.get(f"/v1/accounts/{giver.account_id}", headers=giver.headers), 200
    )
    assert (account["balance"], account["version"]) == (0, 2)

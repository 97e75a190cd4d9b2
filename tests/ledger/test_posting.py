from __future__ import annotations

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.factories import Api, expect
from tests.ledger.helpers import balance, post

pytestmark = pytest.mark.anyio


async def test_a_transfer_moves_minutes_and_keeps_the_running_balance(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    giver = await api.member(community["id"], admin)
    receiver = await api.member(community["id"], admin, kind="professional")

    txn = await post(
        client,
        community["id"],
        admin,
        [(giver.account_id, 90), (receiver.account_id, -90)],
        memo="Gardening",
    )
    assert [e["balance_after"] for e in txn["entries"]] == [90, -90]

    assert await balance(client, giver.account_id, giver) == 90
    account = expect(
        await client.get(f"/v1/accounts/{receiver.account_id}", headers=receiver.headers), 200
    )
    assert account["balance"] == -90
    assert account["spent_total"] == 90
    assert account["available_to_spend"] == 20 * 60 - 90

    statement = expect(
        await client.get(f"/v1/accounts/{giver.account_id}/entries", headers=giver.headers), 200
    )
    assert statement["items"][0]["counterparties"][0]["account_id"] == receiver.account_id
    assert statement["items"][0]["memo"] == "Gardening"


async def test_over_limit_spending_is_refused_and_changes_nothing(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    a = await api.member(community["id"], admin)
    b = await api.member(community["id"], admin)
    refused = await post(
        client, community["id"], admin, [(a.account_id, 1201), (b.account_id, -1201)], expected=409
    )
    assert refused["code"] == "insufficient_balance"
    assert await balance(client, a.account_id, admin) == 0
    assert await balance(client, b.account_id, admin) == 0


async def test_a_replayed_key_posts_once(client: AsyncClient, app: FastAPI) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    a = await api.member(community["id"], admin)
    b = await api.member(community["id"], admin)
    body = {
        "entries": [
            {"account_id": a.account_id, "minutes": 30},
            {"account_id": b.account_id, "minutes": -30},
        ]
    }
    headers = {**admin.headers, "Idempotency-Key": "abc-123"}
    first = await client.post(
        f"/v1/communities/{community['id']}/transactions", json=body, headers=headers
    )
    second = await client.post(
        f"/v1/communities/{community['id']}/transactions", json=body, headers=headers
    )
    assert first.status_code == second.status_code == 201
    assert second.headers["Idempotency-Replayed"] == "true"
    assert first.json() == second.json()
    assert await balance(client, a.account_id, admin) == 30
    body["entries"][0]["minutes"] = 31
    body["entries"][1]["minutes"] = -31
    reused = await client.post(
        f"/v1/communities/{community['id']}/transactions", json=body, headers=headers
    )
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"

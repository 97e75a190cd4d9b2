"""Receivers of a group exchange confirming at the same moment (PostgreSQL: real parallel
connections). Every share is confirmed and exactly one transaction posts."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.factories import Api, expect

pytestmark = [pytest.mark.anyio, pytest.mark.postgres_only]


async def test_simultaneous_confirmations_post_the_group_exchange_once(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    cid = community["id"]
    provider = await api.member(cid, admin)
    receivers = [await api.member(cid, admin) for _ in range(4)]
    coordinator = await api.member(cid, admin, role="coordinator")
    for round_number in range(3):
        proposal = expect(
            await client.post(
                f"/v1/communities/{cid}/exchanges",
                json={
                    "providers": [{"member_id": provider.member_id, "minutes": 40}],
                    "receivers": [{"member_id": r.member_id} for r in receivers],
                    "split": "equal",
                    "description": f"Group session {round_number}",
                    "category": "teaching",
                    "occurred_on": date.today().isoformat(),
                },
                headers=provider.headers,
            ),
            201,
        )
        confirmers = [r.headers for r in receivers]
        if round_number == 2:  # a coordinator confirming for the group joins the race
            confirmers.append(coordinator.headers)
        answers = await asyncio.gather(
            *(
                client.post(f"/v1/exchanges/{proposal['id']}/confirm", json={}, headers=headers)
                for headers in confirmers
            )
        )
        assert all(a.status_code in (200, 409) for a in answers), [a.text for a in answers]
        final = expect(
            await client.get(f"/v1/exchanges/{proposal['id']}", headers=provider.headers), 200
        )
        assert final["status"] == "confirmed", final
        assert final["transaction_id"] is not None
    account = expect(
        await client.get(f"/v1/accounts/{provider.account_id}", headers=provider.headers), 200
    )
    assert account["balance"] == 120
    assert account["version"] == 3

"""Ledger test helpers: post through the API and read the books back."""

from __future__ import annotations

import uuid
from typing import Any

from httpx import AsyncClient

from tests.factories import Actor, expect


async def post(
    client: AsyncClient,
    community_id: str,
    by: Actor,
    entries: list[tuple[str, int]],
    *,
    key: str | None = None,
    expected: int = 201,
    **fields: Any,
) -> Any:
    response = await client.post(
        f"/v1/communities/{community_id}/transactions",
        json={"entries": [{"account_id": a, "minutes": m} for a, m in entries], **fields},
        headers={**by.headers, "Idempotency-Key": key or str(uuid.uuid4())},
    )
    return expect(response, expected)


async def balance(client: AsyncClient, account_id: str, by: Actor) -> int:
    body = expect(await client.get(f"/v1/accounts/{account_id}", headers=by.headers), 200)
    return int(body["balance"])

"""Invariant 5: history is never rewritten. Not even hand-typed SQL may change or remove an
entry or a transaction: the database itself refuses (UPDATE and DELETE on both backends,
TRUNCATE too on PostgreSQL)."""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.models import Transaction
from tests.factories import Api
from tests.ledger.helpers import books_snapshot, check_books, open_books, post

pytestmark = pytest.mark.anyio

REFUSED_EVERYWHERE = [
    "UPDATE entries SET amount = amount * 2",
    "UPDATE entries SET balance_after = 0",
    "DELETE FROM entries",
    "UPDATE transactions SET memo = 'rewritten'",
    "DELETE FROM transactions",
]


async def _books_with_history(client: AsyncClient, app: FastAPI) -> str:
    api = Api(client, app)
    books = await open_books(api, members=2, logins=False)
    a, b = books.members
    txn = await post(
        client,
        books.id,
        books.admin,
        [(a.account_id, 90), (b.account_id, -90)],
        memo="Gardening",
    )
    reversal = await client.post(
        f"/v1/transactions/{txn['id']}/reversal", headers=books.admin.headers
    )
    assert reversal.status_code == 201, reversal.text
    return str(txn["id"])


async def _refused(app: FastAPI, statement: str) -> None:
    before = await books_snapshot(app)
    async with app.state.engine.connect() as connection:
        with pytest.raises(DBAPIError, match="append-only"):
            await connection.execute(text(statement))
        await connection.rollback()
    assert await books_snapshot(app) == before
    await check_books(app)


async def test_the_database_refuses_to_rewrite_history(client: AsyncClient, app: FastAPI) -> None:
    original_id = await _books_with_history(client, app)
    statements = list(REFUSED_EVERYWHERE)
    if app.state.engine.dialect.name == "postgresql":
        statements += ["TRUNCATE entries CASCADE", "TRUNCATE transactions CASCADE"]
    for statement in statements:
        await _refused(app, statement)

    # The correction is a new transaction that references the original, which is untouched.
    async with app.state.sessionmaker() as session:
        rows = (
            await session.execute(
                text("SELECT id, reverses_id, memo FROM transactions ORDER BY id")
            )
        ).all()
    assert len(rows) == 2
    assert str(rows[0][0]).replace("-", "") == original_id.replace("-", "")
    assert str(rows[1][1]).replace("-", "") == original_id.replace("-", "")
    assert rows[0][2] == "Gardening"


async def test_the_database_refuses_a_second_reversal_written_behind_the_service(
    client: AsyncClient, app: FastAPI
) -> None:
    """A transaction is reversed at most once, whoever writes: a second reversal row naming
    the same original is refused by the unique index (a partial one on PostgreSQL), while
    any number of transactions that reverse nothing (NULL) are fine."""
    original_id = await _books_with_history(client, app)
    async with app.state.sessionmaker() as session:
        reversal = (
            await session.scalars(select(Transaction).where(Transaction.reverses_id.is_not(None)))
        ).one()

    def row(kind: str, reverses: uuid.UUID | None) -> dict[str, object]:
        return {
            "id": uuid.uuid4(),
            "community_id": reversal.community_id,
            "kind": kind,
            "memo": "",
            "occurred_on": reversal.occurred_on,
            "details": {},
            "posted_at": reversal.posted_at,
            "posted_by_user_id": reversal.posted_by_user_id,
            "reverses_id": reverses,
            "content_hash": "x",
        }

    before = await books_snapshot(app)
    async with app.state.engine.connect() as connection:
        with pytest.raises(IntegrityError):
            await connection.execute(insert(Transaction), [row("reversal", uuid.UUID(original_id))])
        await connection.rollback()
    assert await books_snapshot(app) == before
    async with app.state.engine.connect() as connection:
        # Rows that name no original never collide.
        await connection.execute(insert(Transaction), [row("adjustment", None) for _ in range(2)])
        await connection.rollback()

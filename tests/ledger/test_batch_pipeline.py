"""A batch is applied and written in chunks, the database writing one while the engine
applies the next: a chunk's write that fails, on its own or beside a refusal, must leave the
books as they were (or retried whole), and the answer must describe what was committed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger import posting
from app.ledger.schemas import BatchResult
from app.models import Transaction
from tests.factories import Api, expect
from tests.ledger.helpers import Books, balance, books_snapshot, check_books, open_books, refused

pytestmark = pytest.mark.anyio

FIRST_CHUNK, CHUNK = 2, 3  # 8 postings: chunks of 2, 3 and 3


class _Deadlock(Exception):
    sqlstate = "40P01"


class _ConnectionLost(Exception):
    sqlstate = "08006"


def _failing_execute(
    monkeypatch: pytest.MonkeyPatch, fail_on: set[int], error: type[Exception]
) -> list[int]:
    """Make the chunk writes numbered in ``fail_on`` (1-based, counted over the whole request)
    fail while in flight, after the statements really ran. Returns the count of writes."""
    real = posting._execute
    calls: list[int] = []

    async def execute(session: AsyncSession, statements: Sequence[posting.Statement]) -> None:
        calls.append(len(calls) + 1)
        await real(session, statements)
        if len(calls) in fail_on:
            raise DBAPIError("write", {}, error())

    monkeypatch.setattr(posting, "FIRST_CHUNK", FIRST_CHUNK)
    monkeypatch.setattr(posting, "WRITE_CHUNK", CHUNK)
    monkeypatch.setattr(posting, "_execute", execute)
    return calls


def _transfers(a: str, b: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "entries": [
                {"account_id": a, "minutes": 10 + i},
                {"account_id": b, "minutes": -(10 + i)},
            ]
        }
        for i in range(count)
    ]


async def _post(client: AsyncClient, books: Books, items: list[dict[str, Any]]) -> Any:
    """An atomic batch of ``items`` by the books' admin, under a fresh key."""
    return await client.post(
        f"/v1/communities/{books.id}/transactions/batch",
        json={"atomic": True, "transactions": items},
        headers={**books.admin.headers, "Idempotency-Key": str(uuid.uuid4())},
    )


@pytest.mark.postgres_only
async def test_a_deadlock_in_a_later_chunk_retries_the_whole_batch_and_answers_what_committed(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    books = await open_books(Api(client, app), members=2, logins=False)
    a, b = (m.account_id for m in books.members)
    calls = _failing_execute(monkeypatch, fail_on={2}, error=_Deadlock)

    result = expect(await _post(client, books, _transfers(a, b, 8)), 200)

    # Three chunks, the second deadlocked once: three writes thrown away, three kept.
    assert len(calls) == 2 + 3
    assert result["posted"] == 8
    answered = [uuid.UUID(r["transaction"]["id"]) for r in result["results"]]
    async with app.state.sessionmaker() as session:
        stored = set((await session.scalars(select(Transaction.id))).all())
    assert set(answered) == stored  # the retry's transactions, none from the rolled-back try
    versions = [r["transaction"]["entries"][0]["account_version"] for r in result["results"]]
    assert versions == list(range(1, 9))
    moved = sum(10 + i for i in range(8))
    assert [await balance(client, x, books.admin) for x in (a, b)] == [moved, -moved]
    await check_books(app, limits_unchanged=True)


async def test_a_refusal_while_a_chunk_is_written_leaves_nothing_even_if_that_write_fails(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    books = await open_books(Api(client, app), members=3, logins=False)
    a, b, c = (m.account_id for m in books.members)
    _failing_execute(monkeypatch, fail_on={1}, error=_ConnectionLost)
    items = _transfers(a, b, 5)
    items[4] = {
        "entries": [{"account_id": c, "minutes": -590_000}, {"account_id": b, "minutes": 590_000}]
    }
    before = await books_snapshot(app)

    problem = refused(await _post(client, books, items), 422, "batch_refused")

    assert (problem["index"], problem["reason"]) == (4, "insufficient_balance")
    assert await books_snapshot(app) == before
    await check_books(app, limits_unchanged=True)


async def test_a_failed_chunk_write_fails_the_batch_and_changes_nothing(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    books = await open_books(Api(client, app), members=2, logins=False)
    a, b = (m.account_id for m in books.members)
    _failing_execute(monkeypatch, fail_on={2}, error=_ConnectionLost)
    before = await books_snapshot(app)

    response = await _post(client, books, _transfers(a, b, 7))

    assert response.status_code >= 500
    assert await books_snapshot(app) == before
    await check_books(app, limits_unchanged=True)


async def test_a_batch_answer_rendered_item_by_item_is_the_result_models_own_json(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items refused before the engine, by its shape check, by a limit, and posted ones, over
    several chunks: the answer is exactly what ``BatchResult`` itself serialises."""
    monkeypatch.setattr(posting, "FIRST_CHUNK", FIRST_CHUNK)
    monkeypatch.setattr(posting, "WRITE_CHUNK", CHUNK)
    books = await open_books(Api(client, app), members=3, logins=False)
    a, b, c = (m.account_id for m in books.members)
    items = _transfers(a, b, 8)
    items[1] = {**items[1], "occurred_on": "2999-01-01"}  # refused before the engine
    items[3] = {"entries": [{"account_id": a, "minutes": 5}, {"account_id": b, "minutes": -4}]}
    items[6] = {
        "entries": [{"account_id": c, "minutes": -590_000}, {"account_id": a, "minutes": 590_000}]
    }
    response = await client.post(
        f"/v1/communities/{books.id}/transactions/batch",
        json={"atomic": False, "transactions": items},
        headers={**books.admin.headers, "Idempotency-Key": str(uuid.uuid4())},
    )

    body = expect(response, 200)
    assert response.text == BatchResult.model_validate_json(response.text).model_dump_json()
    assert [r["index"] for r in body["results"]] == list(range(8))
    assert [r["status"] == "posted" for r in body["results"]] == [
        i not in (1, 3, 6) for i in range(8)
    ]
    assert [r["error"]["code"] for r in body["results"] if r["error"]] == [
        "unprocessable",
        "unbalanced",
        "insufficient_balance",
    ]
    assert (body["posted"], body["refused"]) == (5, 3)

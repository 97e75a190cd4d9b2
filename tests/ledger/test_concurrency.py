"""The ledger under real concurrency on PostgreSQL.

The app runs with a pool of 20 connections and many requests in flight at once (each request
holds its own connection and transaction, so the database sees real parallel sessions, which
``pg_stat_activity`` confirms). Clients post in opposite directions between pairs of accounts,
in random entry order across several accounts, and onto one hot account, so a naive locking
order would deadlock and a stale read would break a limit. No client may see a 5xx, and the
books must be right afterwards.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from app.main import create_app
from app.models import Transaction
from tests.conftest import make_settings
from tests.factories import Api, expect
from tests.ledger.helpers import Books, books_snapshot, check_books, open_books, partner_headers

pytestmark = [pytest.mark.anyio, pytest.mark.postgres_only]

POOL_SIZE = 20
CLIENTS = 24
REQUESTS_PER_CLIENT = 12
ALLOWED_REFUSALS = {"insufficient_balance", "over_balance_cap"}


@pytest.fixture
async def wide_app(database_url: str) -> AsyncIterator[FastAPI]:
    # Every client's posting in the database at once: the locks, not the worker's admission
    # limit (TIMEBANK_POSTING_CONCURRENCY), are what is tested here.
    application = create_app(
        make_settings(database_url, database_pool_size=POOL_SIZE, posting_concurrency=POOL_SIZE)
    )
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def wide_client(wide_app: FastAPI) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=wide_app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


class ConnectionWatch:
    """Samples how many server sessions the test database has while work runs."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.database = url.database
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.peak = 0
        self.done = anyio.Event()

    async def run(self) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            while not self.done.is_set():
                count = await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    self.database,
                )
                self.peak = max(self.peak, int(count))
                await anyio.sleep(0.002)
        finally:
            await connection.close()


async def _post(
    client: AsyncClient,
    books: Books,
    headers: dict[str, str],
    lines: list[tuple[str, int]],
    key: str | None = None,
) -> Response:
    return await client.post(
        f"/v1/communities/{books.id}/transactions",
        json={"entries": [{"account_id": a, "minutes": m} for a, m in lines], "memo": "load"},
        headers={**headers, "Idempotency-Key": key or str(uuid.uuid4())},
    )


async def test_concurrent_postings_never_deadlock_or_break_the_books(
    wide_client: AsyncClient, wide_app: FastAPI, database_url: str
) -> None:
    api = Api(wide_client, wide_app)
    books = await open_books(api, members=9, logins=False)
    partner = await partner_headers(wide_client, books.id, books.admin, ["ledger:write"])
    accounts = [m.account_id for m in books.members]
    hot, pairs = accounts[0], [(accounts[i], accounts[i + 1]) for i in range(1, 9, 2)]
    statuses: Counter[tuple[int, str]] = Counter()

    async def worker(number: int) -> None:
        rng = random.Random(number)  # reproducible load
        headers = books.admin.headers if number % 2 else partner
        for _ in range(REQUESTS_PER_CLIENT):
            minutes = rng.randint(30, 700)
            if number % 3 == 0:  # pairs, both directions at once
                x, y = pairs[number % len(pairs)]
                lines = (
                    [(x, minutes), (y, -minutes)]
                    if rng.random() < 0.5
                    else [
                        (y, minutes),
                        (x, -minutes),
                    ]
                )
            elif number % 3 == 1:  # onto (and sometimes off) the hot account
                other = rng.choice(accounts[1:])
                sign = 1 if rng.random() < 0.8 else -1
                lines = [(hot, sign * minutes), (other, -sign * minutes)]
            else:  # three accounts, entries in random order
                chosen = rng.sample(accounts, 3)
                lines = [(chosen[0], minutes), (chosen[1], -(minutes // 2))]
                lines.append((chosen[2], -(minutes - minutes // 2)))
                rng.shuffle(lines)
            response = await _post(wide_client, books, headers, lines)
            code = "" if response.status_code == 201 else response.json().get("code", "")
            statuses[(response.status_code, code)] += 1

    watch = ConnectionWatch(database_url)
    async with anyio.create_task_group() as watching:
        watching.start_soon(watch.run)
        async with anyio.create_task_group() as clients:
            for number in range(CLIENTS):
                clients.start_soon(worker, number)
        watch.done.set()

    assert set(statuses) <= {(201, "")} | {(409, code) for code in ALLOWED_REFUSALS}, statuses
    assert statuses[(201, "")] > 0
    assert sum(n for (s, _), n in statuses.items() if s == 409) > 0  # limits were reached
    assert watch.peak >= 16, f"only {watch.peak} database sessions at once"
    await check_books(wide_app, limits_unchanged=True)
    hot_account = expect(
        await wide_client.get(f"/v1/accounts/{hot}", headers=books.admin.headers), 200
    )
    assert hot_account["balance"] <= hot_account["max_balance"]


async def test_racing_requests_with_one_idempotency_key_post_once(
    wide_client: AsyncClient, wide_app: FastAPI
) -> None:
    api = Api(wide_client, wide_app)
    books = await open_books(api, members=2, logins=False)
    a, b = (m.account_id for m in books.members)
    responses: list[Response] = []

    async def send() -> None:
        responses.append(
            await _post(wide_client, books, books.admin.headers, [(a, 45), (b, -45)], key="once")
        )

    for _ in range(3):  # a few rounds: the race lands differently each time
        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(send)

    created = [r for r in responses if r.status_code == 201]
    in_progress = [r for r in responses if r.status_code == 409]
    assert len(created) + len(in_progress) == len(responses), [r.text for r in responses]
    assert all(r.json()["code"] == "idempotency_in_progress" for r in in_progress)
    originals = [r for r in created if r.headers.get("Idempotency-Replayed") != "true"]
    assert len(originals) == 1
    assert all(r.json() == originals[0].json() for r in created)
    async with wide_app.state.sessionmaker() as session:
        posted = await session.scalar(select(func.count(Transaction.id)))
    assert posted == 1
    account = expect(await wide_client.get(f"/v1/accounts/{a}", headers=books.admin.headers), 200)
    assert account["balance"] == 45
    await check_books(wide_app, limits_unchanged=True)


async def test_racing_reversals_reverse_once(wide_client: AsyncClient, wide_app: FastAPI) -> None:
    api = Api(wide_client, wide_app)
    books = await open_books(api, members=2, logins=False)
    a, b = (m.account_id for m in books.members)
    originals = [
        expect(await _post(wide_client, books, books.admin.headers, [(a, 20), (b, -20)]), 201)
        for _ in range(3)
    ]
    results: dict[str, list[Response]] = {t["id"]: [] for t in originals}

    async def reverse(transaction_id: str, with_key: bool) -> None:
        headers = dict(books.admin.headers)
        if with_key:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        results[transaction_id].append(
            await wide_client.post(f"/v1/transactions/{transaction_id}/reversal", headers=headers)
        )

    async with anyio.create_task_group() as group:
        for original in originals:
            for attempt in range(10):
                group.start_soon(reverse, original["id"], attempt % 2 == 0)

    for transaction_id, responses in results.items():
        outcomes = Counter(
            (r.status_code, "" if r.status_code == 201 else r.json()["code"]) for r in responses
        )
        assert outcomes == {(201, ""): 1, (409, "already_reversed"): 9}, (transaction_id, outcomes)
    snapshot = await books_snapshot(wide_app)
    assert snapshot.transactions == 6
    await check_books(wide_app, limits_unchanged=True)
    for account_id in (a, b):
        account: dict[str, Any] = expect(
            await wide_client.get(f"/v1/accounts/{account_id}", headers=books.admin.headers), 200
        )
        assert account["balance"] == 0

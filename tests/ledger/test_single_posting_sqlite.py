"""SQLite's single posting: its own connection on its own thread (app/ledger/single_post_sqlite.py),
taking turns with the general path's writers and with other processes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlalchemy.engine import make_url

from app.core.config import Settings
from app.ledger.idempotency import Outcome
from app.ledger.single_post import SinglePosting
from tests.conftest import BACKEND, make_settings
from tests.factories import IdentityApi, expect
from tests.ledger.helpers import books_snapshot, check_books, open_books, refused

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's own posting path"),
]


@pytest.fixture
def settings(database_url: str) -> Settings:
    # A short busy timeout: the lock another process holds is not waited out for 30 s here.
    return make_settings(database_url, sqlite_busy_timeout_ms=100)


@pytest.fixture
def other_process(settings: Settings) -> Iterator[sqlite3.Connection]:
    """A connection of its own, as another process (a second worker, the CLI) would have."""
    path = make_url(settings.database_url).database
    assert path is not None
    connection = sqlite3.connect(path, isolation_level=None)
    yield connection
    connection.close()


async def _transfer(
    client: AsyncClient, app: FastAPI
) -> tuple[str, dict[str, object], dict[str, str]]:
    books = await open_books(IdentityApi(client, app), members=2, logins=False)
    a, b = (m.account_id for m in books.members)
    body: dict[str, object] = {
        "entries": [{"account_id": a, "minutes": 40}, {"account_id": b, "minutes": -40}]
    }
    headers = {**books.admin.headers, "Idempotency-Key": "visit-1"}
    return f"/v1/communities/{books.id}/transactions", body, headers


async def test_a_database_another_process_keeps_locked_answers_a_retryable_503_and_changes_nothing(
    client: AsyncClient, app: FastAPI, other_process: sqlite3.Connection
) -> None:
    url, body, headers = await _transfer(client, app)
    before = await books_snapshot(app)

    other_process.execute("BEGIN IMMEDIATE")
    try:
        busy = await client.post(url, json=body, headers=headers)
    finally:
        other_process.execute("ROLLBACK")
    refused(busy, 503, "database_unavailable")
    assert busy.headers["Retry-After"] == "1"
    assert await books_snapshot(app) == before

    # The client retries with the same key, and it posts once.
    posted = expect(await client.post(url, json=body, headers=headers), 201)
    replay = await client.post(url, json=body, headers=headers)
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert replay.json() == posted
    await check_books(app)


async def test_a_posting_whose_client_goes_away_still_ends_before_the_next_writer_begins(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, body, headers = await _transfer(client, app)
    poster = app.state.single_poster
    started, release = threading.Event(), threading.Event()
    post_now = poster._post

    def post_when_released(posting: SinglePosting) -> Outcome:
        started.set()
        assert release.wait(10)
        outcome: Outcome = post_now(posting)
        return outcome

    monkeypatch.setattr(poster, "_post", post_when_released)
    request = asyncio.create_task(client.post(url, json=body, headers=headers))
    assert await asyncio.to_thread(started.wait, 10)
    request.cancel()  # the client disconnected
    await asyncio.sleep(0.05)

    # The posting is still running on the poster's thread, and still holds the write lock.
    assert not request.done()
    assert app.state.sqlite_write_lock.locked()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert not app.state.sqlite_write_lock.locked()

    # It committed: the client's retry with its key is answered from the stored outcome.
    monkeypatch.setattr(poster, "_post", post_now)
    replay = await client.post(url, json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["Idempotency-Replayed"] == "true"
    await check_books(app)


@pytest.mark.parametrize(
    "failure",
    [
        "ABORT",  # the failing statement is undone; the transaction stays open
        "ROLLBACK",  # SQLite itself has rolled the whole transaction back (as on a full disk)
    ],
)
async def test_a_failure_after_the_entries_are_written_leaves_nothing_behind(
    client: AsyncClient, app: FastAPI, other_process: sqlite3.Connection, failure: str
) -> None:
    url, body, headers = await _transfer(client, app)
    before = await books_snapshot(app)
    # The last write of a posting is its idempotency record: make it fail.
    other_process.execute(
        "CREATE TRIGGER fail_the_record BEFORE INSERT ON idempotency_records "
        f"BEGIN SELECT RAISE({failure}, 'the disk is full'); END"
    )
    failed = await client.post(url, json=body, headers=headers)
    assert failed.status_code == 500
    assert "disk" not in failed.text  # nothing internal is told to the client
    assert await books_snapshot(app) == before

    other_process.execute("DROP TRIGGER fail_the_record")
    expect(await client.post(url, json=body, headers=headers), 201)
    await check_books(app)


async def test_postings_queued_behind_a_busy_thread_go_over_in_one_turn_and_each_stands_alone(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, body, headers = await _transfer(client, app)
    entries = body["entries"]
    assert isinstance(entries, list)
    a, b = (entry["account_id"] for entry in entries)
    overdraw: dict[str, object] = {
        "entries": [{"account_id": a, "minutes": 500_000}, {"account_id": b, "minutes": -500_000}]
    }
    poster = app.state.single_poster
    started, release = threading.Event(), threading.Event()
    post_now, post_each_now = poster._post, poster._post_each
    turns: list[int] = []

    def hold_the_first(posting: SinglePosting) -> Outcome:
        if not started.is_set():
            started.set()
            assert release.wait(10)
        outcome: Outcome = post_now(posting)
        return outcome

    def count_turn(postings: list[SinglePosting]) -> list[Outcome | Exception]:
        turns.append(len(postings))
        outcomes: list[Outcome | Exception] = post_each_now(postings)
        return outcomes

    monkeypatch.setattr(poster, "_post", hold_the_first)
    monkeypatch.setattr(poster, "_post_each", count_turn)

    def send(key: str, payload: dict[str, object]) -> asyncio.Task[Response]:
        return asyncio.create_task(
            client.post(url, json=payload, headers={**headers, "Idempotency-Key": key})
        )

    first = send("k0", body)
    assert await asyncio.to_thread(started.wait, 10)
    # While the thread is busy: two postings, one over a balance cap, and one whose client leaves.
    queued = [send("k1", body), send("k2", overdraw), send("k3", body)]
    leaving = send("k4", body)
    await asyncio.sleep(0.05)
    leaving.cancel()
    await asyncio.sleep(0.01)
    release.set()

    assert (await first).status_code == 201
    one, overdrawn, three = await asyncio.gather(*queued)
    assert (one.status_code, three.status_code) == (201, 201)
    refused(overdrawn, 409, "over_balance_cap")
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert turns == [1, 3]  # the three that queued went over together; the one that left, never
    assert [
        one.json()["entries"][0]["balance_after"],
        three.json()["entries"][0]["balance_after"],
    ] == [80, 120]

    # The posting whose client left was never made: its key is still free.
    retried = await client.post(url, json=body, headers={**headers, "Idempotency-Key": "k4"})
    assert retried.status_code == 201
    assert "Idempotency-Replayed" not in retried.headers
    await check_books(app)


async def test_a_thread_that_cannot_take_the_postings_fails_them_and_the_next_are_taken(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, body, headers = await _transfer(client, app)
    before = await books_snapshot(app)
    poster = app.state.single_poster
    post_each_now = poster._post_each

    def refuse(postings: list[SinglePosting]) -> list[Outcome | Exception]:
        raise RuntimeError("cannot schedule new futures after shutdown")

    monkeypatch.setattr(poster, "_post_each", refuse)
    failed = await client.post(url, json=body, headers=headers)
    assert failed.status_code == 500  # answered, not left waiting
    assert await books_snapshot(app) == before

    monkeypatch.setattr(poster, "_post_each", post_each_now)
    expect(await client.post(url, json=body, headers=headers), 201)
    await check_books(app)

"""One posting: every refusal in the order and words of the general path, and the response
byte for byte as pydantic renders it.

``POST /v1/communities/{community_id}/transactions`` runs in one call to the database
(app/ledger/single_post.py): on PostgreSQL one database function (migration 0008), on SQLite
one hop to the poster's own connection; both state the access and idempotency rules again
beside the general path's. The cases here reach states no API route creates (a disabled user,
a closed account) and the ones it does (a suspended membership, a revoked client, a partner of
another community), so every path is held to the same answers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from pydantic import TypeAdapter
from sqlalchemy import text, update

from app.access.community import CommunityRef
from app.access.principal import TokenSubject
from app.core.clock import utcnow
from app.core.errors import database_unavailable
from app.ledger import errors, single_post
from app.ledger.idempotency import IdempotencyKey
from app.ledger.posting import PostedEntry, PostedTransaction
from app.ledger.schemas import TransactionCreate
from app.ledger.service import transaction_read
from app.models.ledger import Account, TransactionKind
from tests.factories import IdentityApi, expect
from tests.ledger.helpers import balance, books_snapshot, check_books, open_books, refused
from tests.reconciliation.helpers import db_id

pytestmark = pytest.mark.anyio


async def _sql(app: FastAPI, statement: str, **params: Any) -> None:
    async with app.state.engine.begin() as connection:
        await connection.execute(text(statement), params)


async def test_each_refusal_of_a_single_posting_names_its_reason_and_changes_nothing(
    client: AsyncClient, app: FastAPI
) -> None:
    api = IdentityApi(client, app)
    books = await open_books(api, members=2)
    a, b = books.members
    url = f"/v1/communities/{books.id}/transactions"
    body = {
        "entries": [
            {"account_id": a.account_id, "minutes": 30},
            {"account_id": b.account_id, "minutes": -30},
        ]
    }
    partner = await api.partner(books.id, books.admin, ["ledger:read", "ledger:write"])
    expect(
        await client.post(url, json=body, headers={**partner.headers, "Idempotency-Key": "p1"}), 201
    )
    reader = await api.partner(books.id, books.admin, ["ledger:read"])
    elsewhere, elsewhere_admin = await api.community()
    foreign = await api.partner(elsewhere["id"], elsewhere_admin, ["ledger:write"])
    before = await books_snapshot(app)

    async def attempt(headers: dict[str, str], *, to: str = url) -> Response:
        return await client.post(
            to, json=body, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
        )

    # A community that does not exist, its id written in capitals: the answer quotes it so.
    written = str(uuid.uuid4()).upper()
    problem = refused(
        await attempt(books.admin.headers, to=f"/v1/communities/{written}/transactions"),
        404,
        "community_not_found",
    )
    assert written in problem["detail"]

    # A partner client of another community: to it, this one does not exist. A partner of
    # this one that may only read may not post.
    refused(await attempt(foreign.headers), 404, "community_not_found")
    problem = refused(await attempt(reader.headers), 403, "insufficient_scope")
    assert "ledger:write" in problem["detail"]

    # A plain member may not post directly; a suspended coordinator may not act at all.
    refused(await attempt(a.headers), 403, "insufficient_role")
    expect(
        await client.patch(
            f"/v1/members/{books.coordinator.member_id}",
            json={"status": "suspended"},
            headers=books.admin.headers,
        ),
        200,
    )
    problem = refused(await attempt(books.coordinator.headers), 403, "membership_inactive")
    assert "suspended" in problem["detail"]

    # A closed account (no route closes one; an operator can).
    await _sql(
        app, "UPDATE accounts SET status = 'closed' WHERE id = :id", id=db_id(app, b.account_id)
    )
    problem = refused(await attempt(books.admin.headers), 409, "account_closed")
    assert b.account_id in problem["detail"]
    await _sql(
        app, "UPDATE accounts SET status = 'open' WHERE id = :id", id=db_id(app, b.account_id)
    )

    # A revoked partner client, and a disabled user: their tokens stop working at once.
    expect(
        await client.delete(
            f"/v1/communities/{books.id}/clients/{partner.client_id}", headers=books.admin.headers
        ),
        200,
    )
    problem = refused(await attempt(partner.headers), 401, "invalid_token")
    assert "revoked" in problem["detail"]
    await _sql(
        app, "UPDATE users SET is_active = false WHERE id = :id", id=db_id(app, books.admin.user_id)
    )
    problem = refused(await attempt(books.admin.headers), 401, "invalid_token")
    assert "disabled" in problem["detail"]

    assert await books_snapshot(app) == before
    await check_books(app)


async def test_a_posted_transaction_answers_exactly_as_pydantic_renders_it(
    client: AsyncClient, app: FastAPI
) -> None:
    """The PostgreSQL function splices the entries into a response pydantic rendered up to
    them; the whole must be what the general path sends, to the byte, and so must its replay."""
    api = IdentityApi(client, app)
    books = await open_books(api, members=3, logins=False)
    a, b, c = (m.account_id for m in books.members)
    memo = 'Brought over: "Ana\'s" hours \\ café \u2013 line\nbreak'
    body = {
        "kind": "opening",
        "memo": memo,
        "occurred_on": "2026-01-31",
        "details": {"z": [1, 2.5, {"b": None, "a": True}], "a": "é", "m": {"y": 1, "x": -2}},
        "entries": [
            {"account_id": c, "minutes": 125},
            {"account_id": a, "minutes": -100},
            {"account_id": b, "minutes": -25},
        ],
    }
    headers = {**books.admin.headers, "Idempotency-Key": "exact"}
    url = f"/v1/communities/{books.id}/transactions"
    first = await client.post(url, json=body, headers=headers)
    assert first.status_code == 201, first.text
    sent = first.json()

    posted = PostedTransaction(
        id=uuid.UUID(sent["id"]),
        community_id=uuid.UUID(books.id),
        kind=TransactionKind.opening,
        memo=memo,
        occurred_on=date(2026, 1, 31),
        details={"a": "é", "m": {"x": -2, "y": 1}, "z": [1, 2.5, {"a": True, "b": None}]},
        posted_at=datetime.fromisoformat(sent["posted_at"].replace("Z", "+00:00")),
        posted_by_user_id=uuid.UUID(books.admin.user_id),
        posted_by_client_id=None,
        reverses_id=None,
        content_hash=sent["content_hash"],
        entries=(
            PostedEntry(uuid.UUID(c), 125, 125, 1),
            PostedEntry(uuid.UUID(a), -100, -100, 1),
            PostedEntry(uuid.UUID(b), -25, -25, 1),
        ),
    )
    assert first.content == transaction_read(posted).model_dump_json().encode()

    replay = await client.post(url, json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert replay.content == first.content
    await check_books(app)


class _FakeConnection:
    """An asyncpg connection whose calls subclasses answer; it notes being terminated."""

    def __init__(self) -> None:
        self.terminated = False
        self.calls = 0

    def terminate(self) -> None:
        self.terminated = True

    def is_closed(self) -> bool:
        return self.terminated

    async def fetchrow(self, *parameters: object) -> dict[str, object]:
        self.calls += 1
        return {"outcome": "posted", "response_status": 201, "response_body": "{}"}


class _Connections:
    """What the poster is given to open connections: opens ``make()``s and keeps them."""

    def __init__(self, make: Callable[[], _FakeConnection] = _FakeConnection) -> None:
        self.make = make
        self.opened: list[_FakeConnection] = []

    async def __call__(self) -> _FakeConnection:
        self.opened.append(self.make())
        return self.opened[-1]

    def poster(self, concurrency: int = 1, **options: Any) -> single_post.PostgresSinglePoster:
        return single_post.PostgresSinglePoster(self, concurrency, **options)


class _BrokenConnection(_FakeConnection):
    """A connection whose call fails with ``error``; closed, as asyncpg's is, when the socket
    went away (not yet after a server's shutdown message, nor after a cancelled call)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    async def fetchrow(self, *parameters: object) -> dict[str, object]:
        if isinstance(
            self.error, OSError | asyncpg.InterfaceError | asyncpg.PostgresConnectionError
        ):
            self.terminated = True
        raise self.error


def _unique_violation(constraint: str) -> asyncpg.UniqueViolationError:
    error = asyncpg.UniqueViolationError("duplicate key value")
    error.constraint_name = constraint
    return error


def _posting(principal: str = "user:1") -> single_post.SinglePosting:
    subject = TokenSubject(user_id=uuid.uuid4(), client_id=None, scopes=frozenset())
    community = CommunityRef(id=uuid.uuid4(), as_written="x")
    data = TransactionCreate.model_validate(
        {
            "entries": [
                {"account_id": str(uuid.uuid4()), "minutes": 5},
                {"account_id": str(uuid.uuid4()), "minutes": -5},
            ]
        }
    )
    key = IdempotencyKey(principal, "k", "POST", "/p", "h")
    return single_post.prepare(subject, community, key, data)


@pytest.mark.postgres_only
async def test_the_posters_sessions_plan_the_function_once_not_per_call(
    client: AsyncClient, app: FastAPI
) -> None:
    """Left to choose, PostgreSQL re-planned some of the function's statements on every call,
    about a fifth of its cost; the poster's own connections ask for generic plans."""
    books = await open_books(IdentityApi(client, app), members=2, logins=False)
    a, b = (m.account_id for m in books.members)
    expect(
        await client.post(
            f"/v1/communities/{books.id}/transactions",
            json={"entries": [{"account_id": a, "minutes": 5}, {"account_id": b, "minutes": -5}]},
            headers={**books.admin.headers, "Idempotency-Key": "plan-1"},
        ),
        201,
    )
    [(connection, _)] = app.state.single_poster._idle
    assert await connection.fetchval("SHOW plan_cache_mode") == "force_generic_plan"


@pytest.mark.postgres_only
async def test_a_posting_after_the_database_ended_the_posters_idle_session_is_made(
    client: AsyncClient, app: FastAPI
) -> None:
    """The database ends the poster's idle session (as a restart or an idle timeout does):
    the next posting is made on a new session, once, rather than answered 503."""
    books = await open_books(IdentityApi(client, app), members=2, logins=False)
    a, b = (m.account_id for m in books.members)

    async def transfer(key: str) -> Response:
        return await client.post(
            f"/v1/communities/{books.id}/transactions",
            json={"entries": [{"account_id": a, "minutes": 5}, {"account_id": b, "minutes": -5}]},
            headers={**books.admin.headers, "Idempotency-Key": key},
        )

    expect(await transfer("before"), 201)
    [(connection, _)] = app.state.single_poster._idle
    async with app.state.engine.connect() as admin:
        ended = await admin.scalar(
            text("SELECT pg_terminate_backend(:pid)"), {"pid": connection.get_server_pid()}
        )
    assert ended

    after = await transfer("after")

    assert after.status_code == 201, after.text
    assert "idempotency-replayed" not in after.headers
    assert await balance(client, a, books.admin) == 10
    await check_books(app)


@pytest.mark.parametrize(
    ("error", "answer", "kept"),
    [
        # The key's first request committed between this one's lock and its insert.
        (
            _unique_violation("uq_idempotency_records_principal_key"),
            errors.IdempotencyInProgress,
            True,
        ),
        (asyncpg.DeadlockDetectedError("deadlock detected"), errors.LedgerBusy, True),
        (asyncpg.SerializationError("could not serialize"), errors.LedgerBusy, True),
        # Anything else is not the client's to retry: it surfaces as it is (a 500).
        (_unique_violation("pk_transactions"), asyncpg.UniqueViolationError, True),
        (asyncpg.CheckViolationError("check"), asyncpg.CheckViolationError, True),
        # A broken connection is never used again, and the answer is a retryable 503.
        (
            asyncpg.ConnectionDoesNotExistError("connection was closed"),
            asyncpg.ConnectionDoesNotExistError,
            False,
        ),
        (asyncpg.AdminShutdownError("terminating connection"), asyncpg.AdminShutdownError, False),
        (ConnectionResetError("reset by peer"), ConnectionResetError, False),
        (asyncpg.InterfaceError("connection is closed"), asyncpg.InterfaceError, False),
        # Interrupted mid-call: what the connection is doing is unknown.
        (asyncio.CancelledError(), asyncio.CancelledError, False),
    ],
)
async def test_database_errors_of_the_single_posting_call_become_the_general_paths_answers(
    error: BaseException, answer: type[BaseException], kept: bool
) -> None:
    connections = _Connections(lambda: _BrokenConnection(error))
    poster = connections.poster()

    with pytest.raises(answer):
        await poster.post(_posting())
    with pytest.raises(answer):
        await poster.post(_posting())

    # A connection the server merely refused takes the next call; any other is let go.
    assert len(connections.opened) == (1 if kept else 2)
    assert [c.terminated for c in connections.opened] == [not kept] * len(connections.opened)
    if isinstance(error, asyncpg.PostgresConnectionError | OSError):
        assert database_unavailable(error)


async def test_the_poster_reuses_its_connections_recycles_old_ones_and_closes_them() -> None:
    connections = _Connections()
    poster = connections.poster(concurrency=2)
    for _ in range(3):
        await poster.post(_posting())
    assert len(connections.opened) == 1
    assert connections.opened[0].calls == 3

    ageing = _Connections()
    recycled = ageing.poster(recycle_seconds=0.0)
    await recycled.post(_posting())
    await asyncio.sleep(0.001)
    await recycled.post(_posting())
    assert [c.terminated for c in ageing.opened] == [True, True]  # each closed after its call

    await poster.close()
    assert connections.opened[0].terminated
    await poster.post(_posting())  # a call while closing: its connection is closed after it
    assert [c.terminated for c in connections.opened] == [True, True]


class _DroppedWhileIdle(_FakeConnection):
    """Answers its first call; by the next, the server or network has dropped it, which
    asyncpg learns only when it is used (``error``) or already knows (``known``)."""

    def __init__(self, error: BaseException, *, known: bool = False) -> None:
        super().__init__()
        self.error, self.known = error, known
        self.attempts = 0

    def is_closed(self) -> bool:
        return self.terminated or (self.known and self.calls > 0)

    async def fetchrow(self, *parameters: object) -> dict[str, object]:
        self.attempts += 1
        if self.calls:
            self.terminated = True
            raise self.error
        return await super().fetchrow(*parameters)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        ConnectionResetError("reset by peer"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"),
    ],
)
async def test_a_connection_dropped_while_idle_costs_the_posting_nothing(
    error: BaseException,
) -> None:
    """After a database restart the idle connection's next call fails: the posting is made
    on a new connection instead of answering 503."""
    made: list[_FakeConnection] = []

    def make() -> _FakeConnection:
        made.append(_DroppedWhileIdle(error) if not made else _FakeConnection())
        return made[-1]

    connections = _Connections(make)
    poster = connections.poster()
    await poster.post(_posting())

    outcome = await poster.post(_posting())

    assert (outcome.status, outcome.replayed) == (201, False)
    assert [c.calls for c in connections.opened] == [1, 1]
    assert [c.terminated for c in connections.opened] == [True, False]


async def test_an_idle_connection_known_to_be_closed_is_let_go_before_the_call() -> None:
    made: list[_FakeConnection] = []

    def make() -> _FakeConnection:
        made.append(
            _DroppedWhileIdle(OSError("gone"), known=True) if not made else _FakeConnection()
        )
        return made[-1]

    connections = _Connections(make)
    poster = connections.poster()
    await poster.post(_posting())

    await poster.post(_posting())

    closed = made[0]
    assert isinstance(closed, _DroppedWhileIdle)
    assert (closed.attempts, closed.terminated) == (1, True)  # no call on it once closed
    assert [c.calls for c in connections.opened] == [1, 1]


async def test_a_new_connection_that_fails_is_not_tried_again() -> None:
    """Only a connection that waited idle gets a second try: a failure on a new one means
    the database is unreachable now, and the client is told so (503, retry later)."""
    connections = _Connections(lambda: _BrokenConnection(ConnectionResetError("refused")))
    poster = connections.poster()
    with pytest.raises(ConnectionResetError):
        await poster.post(_posting())
    assert len(connections.opened) == 1


def test_an_outcome_the_service_does_not_know_is_a_defect_not_a_refusal() -> None:
    with pytest.raises(AssertionError, match="surprise"):
        single_post._refusal("surprise", {}, uuid.uuid4(), "x")


async def test_a_worker_sends_at_most_its_posting_concurrency_to_postgresql_at_once() -> None:
    """The rest wait their turn in the worker: fewer busy backends cost PostgreSQL less CPU
    per posting than many contending ones."""

    class Slow(_FakeConnection):
        """Calls wait until released, counting how many are in the database."""

        inside = most_inside = 0
        release = asyncio.Event()

        async def fetchrow(self, *parameters: object) -> dict[str, object]:
            Slow.inside += 1
            Slow.most_inside = max(Slow.most_inside, Slow.inside)
            await Slow.release.wait()
            Slow.inside -= 1
            return await super().fetchrow(*parameters)

    connections = _Connections(Slow)
    poster = connections.poster(concurrency=3)
    calls = [asyncio.create_task(poster.post(_posting(f"user:{n}"))) for n in range(10)]
    for _ in range(100):  # every task gets as far as it can
        await asyncio.sleep(0)
    assert Slow.inside == 3  # seven wait in the worker
    Slow.release.set()
    outcomes = await asyncio.gather(*calls)
    assert [outcome.status for outcome in outcomes] == [201] * 10
    assert Slow.most_inside == 3
    assert len(connections.opened) == 3


async def _accounts_last_changed(app: FastAPI, at: datetime, *account_ids: str) -> None:
    ids = [uuid.UUID(account_id) for account_id in account_ids]
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(update(Account).where(Account.id.in_(ids)).values(updated_at=at))


@pytest.mark.parametrize("microsecond", [0, 120])
async def test_a_posting_is_never_stamped_before_its_accounts_last_change(
    client: AsyncClient, app: FastAPI, microsecond: int
) -> None:
    """Another posting on an account can be written between this one's stamp and its turn (it
    waited for the lock, or behind other requests), or the clock can step back: the posting then
    takes the account's last change as its time, so an account's entries run in time order as
    they run in version order, and a balance ``as_of`` an instant is the one the statement
    shows. The response, its replay and the stored rows all say that time, as pydantic renders
    it (no fraction when it is zero)."""
    api = IdentityApi(client, app)
    books = await open_books(api, members=2, logins=False)
    a, b = (m.account_id for m in books.members)
    later = (utcnow() + timedelta(minutes=5)).replace(microsecond=microsecond)
    await _accounts_last_changed(app, later, b)

    url = f"/v1/communities/{books.id}/transactions"
    body = {"entries": [{"account_id": a, "minutes": 20}, {"account_id": b, "minutes": -20}]}
    headers = {**books.admin.headers, "Idempotency-Key": "stamped"}
    first = await client.post(url, json=body, headers=headers)
    posted = expect(first, 201)
    assert posted["posted_at"] == TypeAdapter(datetime).dump_json(later).decode().strip('"')
    stored = expect(
        await client.get(f"/v1/transactions/{posted['id']}", headers=books.admin.headers), 200
    )
    assert stored["posted_at"] == posted["posted_at"]
    replay = await client.post(url, json=body, headers=headers)
    assert replay.content == first.content

    # The batch route's engine keeps the same rule.
    latest = later + timedelta(seconds=1)
    await _accounts_last_changed(app, latest, a)
    batch = await client.post(
        f"{url}/batch",
        json={"atomic": True, "transactions": [body]},
        headers={**books.admin.headers, "Idempotency-Key": "stamped-batch"},
    )
    [item] = expect(batch, 200)["results"]
    assert datetime.fromisoformat(item["transaction"]["posted_at"]) == latest

    statement = expect(
        await client.get(f"/v1/accounts/{a}/entries", headers=books.admin.headers), 200
    )
    times = [datetime.fromisoformat(line["posted_at"]) for line in statement["items"]]
    assert times == sorted(times, reverse=True)  # newest first, by version and by time alike
    await check_books(app)

"""The ledger's rows always name rows that exist: an entry its account and its transaction, a
transaction its community, the user or partner client who posted it and the transaction it
reverses. Whoever writes, the database refuses a
row naming a missing one, and refuses to delete (or renumber) a row the ledger names.

SQLite checks these with foreign keys. PostgreSQL checks them with triggers over each
statement's rows and on the referenced tables (migration 0014), which must refuse what a
foreign key refuses, including when a delete and a posting race."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

from app.core.clock import utcnow
from app.models import Account, ApiClient, Community, Entry, Transaction, User
from tests.factories import Api, expect
from tests.ledger.helpers import books_snapshot, open_books, partner_headers, post

pytestmark = pytest.mark.anyio

# PostgreSQL names the reference in its message; SQLite says only that a foreign key failed.
MISSING_OR_REFERENCED = "violates foreign key constraint|FOREIGN KEY constraint failed"


@dataclass
class Ledger:
    community_id: uuid.UUID
    poster_id: uuid.UUID
    client_id: uuid.UUID  # the partner client that posted the second transaction
    transaction_id: uuid.UUID
    account_id: uuid.UUID  # named by the transaction's entries
    spare_account_id: uuid.UUID  # named by no entry


async def _ledger(client: AsyncClient, app: FastAPI) -> Ledger:
    books = await open_books(Api(client, app), members=3, logins=False)
    a, b, spare = books.members
    posted = await post(client, books.id, books.admin, [(a.account_id, 30), (b.account_id, -30)])
    partner = await partner_headers(client, books.id, books.admin, ["ledger:write"])
    by_partner = expect(
        await client.post(
            f"/v1/communities/{books.id}/transactions",
            json={
                "entries": [
                    {"account_id": b.account_id, "minutes": 10},
                    {"account_id": a.account_id, "minutes": -10},
                ]
            },
            headers={**partner, "Idempotency-Key": str(uuid.uuid4())},
        ),
        201,
    )
    async with app.state.sessionmaker() as session:
        poster = await session.scalar(
            select(Transaction.posted_by_user_id).where(Transaction.id == uuid.UUID(posted["id"]))
        )
        partner_id = await session.scalar(
            select(Transaction.posted_by_client_id).where(
                Transaction.id == uuid.UUID(by_partner["id"])
            )
        )
    assert poster is not None
    assert partner_id is not None
    return Ledger(
        community_id=uuid.UUID(books.id),
        poster_id=poster,
        client_id=partner_id,
        transaction_id=uuid.UUID(posted["id"]),
        account_id=uuid.UUID(a.account_id),
        spare_account_id=uuid.UUID(spare.account_id),
    )


def _transaction_row(ledger: Ledger, **overrides: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "community_id": ledger.community_id,
        "kind": "adjustment",
        "memo": "",
        "occurred_on": date(2026, 11, 27),
        "details": {},
        "posted_at": utcnow(),
        "posted_by_user_id": ledger.poster_id,
        "content_hash": "x",
        **overrides,
    }


def _entry_rows(transaction_id: uuid.UUID, account_id: uuid.UUID) -> list[dict[str, Any]]:
    # (Versions far above any the test's postings reach: only the references are in question.)
    return [
        {
            "transaction_id": transaction_id,
            "account_id": account_id,
            "amount": amount,
            "balance_after": amount,
            "account_version": 1_000 + n,
            "posted_at": utcnow(),
        }
        for n, amount in enumerate((5, -5))
    ]


async def _lone_parents(client: AsyncClient, app: FastAPI, ledger: Ledger) -> dict[Any, Any]:
    """A community and a user that only a ledger row names (a committed transaction row),
    with the reference that must refuse their removal: other tables' foreign keys name the
    ledger's own community and poster, and would refuse first."""
    user = expect(
        await client.post(
            "/v1/users",
            json={"email": f"{uuid.uuid4().hex}@example.org", "password": "long enough pw"},
        ),
        201,
    )
    community_id = uuid.uuid4()
    async with app.state.sessionmaker() as session, session.begin():
        session.add(Community(id=community_id, slug=f"lone-{community_id.hex[:8]}", name="Lone"))
    async with app.state.engine.begin() as connection:
        row = _transaction_row(
            ledger, community_id=community_id, posted_by_user_id=uuid.UUID(user["id"])
        )
        await connection.execute(insert(Transaction), [row])
    return {
        (Account, ledger.account_id): "fk_entries_account_id_accounts",
        (Community, community_id): "fk_transactions_community_id_communities",
        (User, uuid.UUID(user["id"])): "fk_transactions_posted_by_user_id_users",
        (ApiClient, ledger.client_id): "fk_transactions_posted_by_client_id_api_clients",
    }


def _constraint(app: FastAPI, error: BaseException | None) -> str | None:
    """The constraint PostgreSQL names in ``error`` (SQLite names none)."""
    if app.state.engine.dialect.name != "postgresql" or not isinstance(error, DBAPIError):
        return None
    return getattr(error.orig.__cause__, "constraint_name", None)  # type: ignore[union-attr]


async def _refused(
    app: FastAPI,
    statement: Executable,
    rows: list[dict[str, Any]] | None = None,
    *,
    match: str = MISSING_OR_REFERENCED,
    error: type[DBAPIError] = IntegrityError,
    constraint: str | None = None,
) -> Any:
    """``statement`` fails with ``error`` matching ``match`` (on PostgreSQL naming
    ``constraint``, when given), and the books are as before. The driver's own error (its
    detail, on PostgreSQL), for more checks."""
    before = await books_snapshot(app)
    async with app.state.engine.connect() as connection:
        with pytest.raises(error, match=match) as refusal:
            await connection.execute(statement, rows)
        await connection.rollback()
    if constraint is not None and app.state.engine.dialect.name == "postgresql":
        assert _constraint(app, refusal.value) == constraint, refusal.value
    assert await books_snapshot(app) == before
    return refusal.value.orig.__cause__  # type: ignore[union-attr]


async def test_an_entry_naming_a_missing_account_or_transaction_is_refused(
    client: AsyncClient, app: FastAPI
) -> None:
    ledger = await _ledger(client, app)
    missing = uuid.uuid4()

    async with app.state.engine.connect() as connection:
        # The same rows naming rows that exist are accepted (then rolled back).
        await connection.execute(
            insert(Entry), _entry_rows(ledger.transaction_id, ledger.spare_account_id)
        )
        await connection.rollback()
    cause = await _refused(
        app,
        insert(Entry),
        _entry_rows(ledger.transaction_id, missing),
        constraint="fk_entries_account_id_accounts",
    )
    if app.state.engine.dialect.name == "postgresql":
        # The report names the key too, as a foreign key's does.
        assert cause.detail == f'Key (account_id)=({missing}) is not present in table "accounts".'
    await _refused(
        app,
        insert(Entry),
        _entry_rows(missing, ledger.spare_account_id),
        constraint="fk_entries_transaction_id_transactions",
    )


async def test_a_transaction_naming_a_missing_community_poster_or_original_is_refused(
    client: AsyncClient, app: FastAPI
) -> None:
    ledger = await _ledger(client, app)
    async with app.state.engine.connect() as connection:
        # The same row naming rows that exist, and one naming no poster, are accepted.
        await connection.execute(
            insert(Transaction),
            [_transaction_row(ledger), _transaction_row(ledger, posted_by_user_id=None)],
        )
        await connection.rollback()
    for missing, constraint in (
        ({"community_id": uuid.uuid4()}, "fk_transactions_community_id_communities"),
        ({"posted_by_user_id": uuid.uuid4()}, "fk_transactions_posted_by_user_id_users"),
        (
            {"posted_by_user_id": None, "posted_by_client_id": uuid.uuid4()},
            "fk_transactions_posted_by_client_id_api_clients",
        ),
        (
            {"kind": "reversal", "reverses_id": uuid.uuid4()},
            "fk_transactions_reverses_id_transactions",
        ),
    ):
        await _refused(
            app,
            insert(Transaction),
            [_transaction_row(ledger, **missing)],
            constraint=constraint,
        )


async def test_a_row_the_ledger_names_is_neither_deleted_nor_renumbered(
    client: AsyncClient, app: FastAPI
) -> None:
    ledger = await _ledger(client, app)
    new_id = uuid.uuid4()
    for (table, row_id), constraint in (await _lone_parents(client, app, ledger)).items():
        await _refused(app, delete(table).where(table.id == row_id), constraint=constraint)
        await _refused(
            app,
            update(table).where(table.id == row_id).values(id=new_id),
            constraint=constraint,
        )


async def test_a_row_the_ledger_does_not_name_can_still_be_deleted(
    client: AsyncClient, app: FastAPI
) -> None:
    """The guard refuses only what a foreign key would: a user who never posted goes."""
    await _ledger(client, app)
    user = expect(
        await client.post(
            "/v1/users", json={"email": "never-posted@example.org", "password": "long enough pw"}
        ),
        201,
    )
    async with app.state.engine.begin() as connection:
        deleted = await connection.execute(delete(User).where(User.id == uuid.UUID(user["id"])))
    assert deleted.rowcount == 1


@pytest.mark.postgres_only
async def test_truncating_a_table_the_ledger_names_is_refused(
    client: AsyncClient, app: FastAPI
) -> None:
    ledger = await _ledger(client, app)
    for (table, _row_id), constraint in (await _lone_parents(client, app, ledger)).items():
        # (CASCADE: the other tables' foreign keys are not in question. The named table's
        # own trigger runs first, and says which ledger reference it keeps.)
        cause = await _refused(
            app,
            text(f"TRUNCATE {table.__tablename__} CASCADE"),
            match="cannot truncate a table referenced in a foreign key constraint",
            error=DBAPIError,  # (SQLSTATE 0A000, as a foreign key's refusal)
        )
        assert constraint in cause.detail


@pytest.mark.postgres_only
async def test_a_temporary_table_cannot_stand_in_for_a_referenced_one(
    client: AsyncClient, app: FastAPI
) -> None:
    """The checks name their tables with the schema: pg_temp, first in any search_path, does
    not hide the real accounts or entries."""
    ledger = await _ledger(client, app)
    missing = uuid.uuid4()
    async with app.state.engine.connect() as connection:
        await connection.execute(text("CREATE TEMP TABLE accounts (id uuid)"))
        await connection.execute(text("INSERT INTO accounts VALUES (:id)"), {"id": missing})
        with pytest.raises(IntegrityError):
            await connection.execute(insert(Entry), _entry_rows(ledger.transaction_id, missing))
        await connection.rollback()
    async with app.state.engine.connect() as connection:
        await connection.execute(text("CREATE TEMP TABLE entries (account_id uuid)"))
        with pytest.raises(IntegrityError):
            await connection.execute(delete(Account).where(Account.id == ledger.account_id))
        await connection.rollback()


@pytest.mark.postgres_only
async def test_any_delete_of_a_referenced_table_outside_read_committed_is_refused(
    client: AsyncClient, app: FastAPI
) -> None:
    """A REPEATABLE READ snapshot can be older than a posting that names the row; the guard
    cannot look past its snapshot, so it refuses to run there at all, even for a row that
    nothing names yet."""
    ledger = await _ledger(client, app)
    before = await books_snapshot(app)
    async with app.state.engine.connect() as connection:
        await connection.execution_options(isolation_level="REPEATABLE READ")
        with pytest.raises(DBAPIError, match="runs under READ COMMITTED only"):
            await connection.execute(delete(Account).where(Account.id == ledger.spare_account_id))
        await connection.rollback()
    assert await books_snapshot(app) == before


async def _waiting_for_a_lock(connection: AsyncConnection) -> None:
    """Until another session of this database waits for a lock."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    with anyio.fail_after(10):
        for _poll in iter(int, 1):  # (polled: the server says nothing when a session waits)
            found = await connection.scalar(waiting)
            await connection.rollback()  # (a transaction sees one snapshot of the activity)
            if found:
                return
            await anyio.sleep(0.01)


async def _race(
    app: FastAPI, first: Callable[[AsyncConnection], Awaitable[object]], second_sql: Any
) -> BaseException | None:
    """``first`` runs and holds its transaction open; ``second_sql`` starts on another
    connection and must wait for it; ``first`` commits; what ``second_sql`` raised."""
    outcome: list[BaseException | None] = []

    async def second() -> None:
        async with app.state.engine.connect() as connection:
            try:
                await connection.execute(second_sql)
                await connection.commit()
                outcome.append(None)
            except DBAPIError as error:
                outcome.append(error)

    async with (
        app.state.engine.connect() as holder,
        app.state.engine.connect() as watcher,
        anyio.create_task_group() as tasks,
    ):
        await first(holder)
        tasks.start_soon(second)
        await _waiting_for_a_lock(watcher)
        assert not outcome, "the second session did not wait"
        await holder.commit()
    return outcome[0]


@pytest.mark.postgres_only
async def test_a_delete_racing_a_posting_that_names_the_row_is_refused_whichever_comes_first(
    client: AsyncClient, app: FastAPI
) -> None:
    ledger = await _ledger(client, app)
    fresh = _transaction_row(ledger)

    async def posting(connection: AsyncConnection) -> None:
        await connection.execute(insert(Transaction), [fresh])
        await connection.execute(insert(Entry), _entry_rows(fresh["id"], ledger.spare_account_id))

    # The posting first: the delete waits for it, then sees its committed entries.
    error = await _race(app, posting, delete(Account).where(Account.id == ledger.spare_account_id))
    assert isinstance(error, IntegrityError), error
    assert "fk_entries_account_id_accounts" in str(error)

    # The delete first (of an account no entry names yet): the posting's check waits for it,
    # then finds the account gone.
    async with app.state.sessionmaker() as session:
        other = await session.scalar(
            select(Account.id).where(
                Account.community_id == ledger.community_id,
                Account.id.not_in([ledger.account_id, ledger.spare_account_id]),
                Account.kind == "member",
                Account.version == 0,
            )
        )
    assert other is not None
    late = _transaction_row(ledger)

    async def deletion(connection: AsyncConnection) -> None:
        await connection.execute(delete(Account).where(Account.id == other))

    statement = text(
        "WITH t AS (INSERT INTO transactions (id, community_id, kind, memo, occurred_on, "
        "details, posted_at, posted_by_user_id, content_hash) VALUES (:id, :community, "
        "'adjustment', '', CURRENT_DATE, '{}', now(), :user, 'x')) "
        "INSERT INTO entries (transaction_id, account_id, amount, balance_after, "
        "account_version, posted_at) VALUES (:id, :account, 5, 5, 1000, now())"
    ).bindparams(id=late["id"], community=ledger.community_id, user=ledger.poster_id, account=other)
    error = await _race(app, deletion, statement)
    assert isinstance(error, IntegrityError), error
    assert "fk_entries_account_id_accounts" in str(error)
    async with app.state.sessionmaker() as session:
        assert (
            await session.scalar(
                select(func.count()).select_from(Account).where(Account.id == other)
            )
            == 0
        )
        assert (
            await session.scalar(
                select(func.count()).select_from(Entry).where(Entry.account_id == other)
            )
            == 0
        )

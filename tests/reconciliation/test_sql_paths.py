"""PostgreSQL recomputes content hashes and seal blocks in SQL; SQLite in Python. Both paths
must give the same digests, so a seal made on one verifies on the other."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from types import SimpleNamespace
from typing import Any, cast

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import func, select, text

from app.models import Entry, LedgerSeal
from app.reconciliation import checks, seals, service
from app.reconciliation.findings import CheckResult
from app.reconciliation.seals import SNAPSHOT_WORK_MEM
from app.reconciliation.service import read_snapshot
from tests.reconciliation.helpers import db_id, insert_transaction, reconcile, scenario, tamper

pytestmark = [pytest.mark.anyio, pytest.mark.postgres_only]


async def test_sql_and_python_digests_agree(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    books = await scenario(client, app)
    a, b = books.members[0], books.members[1]
    c = books.members[2]
    await insert_transaction(
        app, books.id, "transfer", [(a.account_id, 7), (b.account_id, -7)], memo="ünïcode ✓"
    )
    # Longer transactions take the ordered-aggregate path in SQL.
    three = await insert_transaction(
        app, books.id, "adjustment", [(c.account_id, -6), (a.account_id, 10), (b.account_id, -4)]
    )
    monkeypatch.setattr(seals, "BLOCK_SIZE", 3)
    async with read_snapshot(app.state.engine) as session:
        high = int(await session.scalar(select(func.max(Entry.id))) or 0)
        in_sql = await seals.digest_span(session, 0, high)
        in_python = await seals.digest_span_in_python(session, 0, high)
        partial_sql = await seals.digest_span(session, 4, high - 2)
        partial_python = await seals.digest_span_in_python(session, 4, high - 2)
        clean_sql = await checks.content_hashes(session, None)
    assert in_sql == in_python
    assert len(in_sql.block_digests) == -(-high // 3)
    assert partial_sql == partial_python
    assert clean_sql.passed

    await tamper(
        app,
        "UPDATE transactions SET memo = 'édité' WHERE id IN (:one, :three)",
        # A transaction left with one line, and one with two lines on the same account.
        "DELETE FROM entries WHERE id = (SELECT min(id) FROM entries WHERE transaction_id = :two)",
        "UPDATE entries SET account_id = :a, account_version = 1000 + id WHERE transaction_id = :four",
        one=db_id(app, books.transfers[0]),
        three=db_id(app, three),
        two=db_id(app, books.transfers[2]),
        four=db_id(app, books.transfers[3]),
        a=db_id(app, a.account_id),
    )
    async with read_snapshot(app.state.engine) as session:
        sql = await checks.content_hashes(session, None)
        python = await checks.content_hashes_in_python(
            session, None, CheckResult(sql.name, sql.description)
        )
        scoped = await checks.content_hashes(session, uuid.UUID(books.id))
    assert sql.as_dict() == python.as_dict()
    assert sorted(f.rows["transaction_id"] for f in sql.findings) == sorted(
        [books.transfers[0], three, books.transfers[2], books.transfers[3]]
    )
    assert scoped.total == 4


async def test_the_snapshot_sets_its_settings_for_its_own_transaction(app: FastAPI) -> None:
    """read_snapshot sets work_mem and jit in one statement, locally: they hold inside the
    snapshot, read-only at repeatable read, and are gone with it."""
    async with read_snapshot(app.state.engine) as session:
        shown = (
            await session.execute(
                text(
                    "SELECT current_setting('work_mem'), "
                    "current_setting('jit'), current_setting('transaction_isolation'), "
                    "current_setting('transaction_read_only')"
                )
            )
        ).one()
        assert tuple(shown) == (SNAPSHOT_WORK_MEM, "off", "repeatable read", "on")
    async with app.state.engine.connect() as connection:
        assert await connection.scalar(text("SELECT current_setting('work_mem')")) != (
            SNAPSHOT_WORK_MEM
        )


async def test_the_span_digested_beside_is_the_runs_snapshot(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new seal's span is digested on another connection while the run checks: it shares
    the run's snapshot, so an entry rewritten behind the service after the snapshot began is
    digested as the run's own connection sees it, not as it is now."""
    await scenario(client, app)
    monkeypatch.setattr(seals, "BLOCK_SIZE", 3)
    async with read_snapshot(app.state.engine) as session:
        high = int(await session.scalar(select(func.max(Entry.id))) or 0)
        await tamper(app, "UPDATE entries SET amount = amount + 1 WHERE id = 2")
        beside = await seals.digest_span_beside(session, 1, high)  # (started after it)
        assert await beside == await seals.digest_span(session, 1, high)
    async with read_snapshot(app.state.engine) as session:
        assert await beside != await seals.digest_span(session, 1, high)


async def test_work_started_beside_and_not_used_is_stopped_or_let_go() -> None:
    """Work the run will not use (a span digested beside a run whose checks failed) is
    cancelled while it runs; should it have failed already, its error is taken, not logged
    as lost."""

    async def fails() -> None:
        raise RuntimeError("gone")

    failed = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    running = asyncio.ensure_future(asyncio.sleep(10))
    for task in (failed, running, None):
        service._discard(task)
    with pytest.raises(asyncio.CancelledError):
        await running
    assert failed.done()
    assert isinstance(failed.exception(), RuntimeError)


async def test_an_incremental_plans_rows_digest_the_new_span_as_the_database_does(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incremental sealing run digests its new span from the rows its plan read
    (span_from_rows): block for block the digests the database computes for the same span,
    and nothing where the rows do not cover it."""
    books = await scenario(client, app)
    assert (await reconcile(client, books.platform))["report"]["seal"] is not None
    a, b, c = books.members[0], books.members[1], books.members[2]
    await insert_transaction(
        app, books.id, "transfer", [(a.account_id, 7), (b.account_id, -7)], memo="ünïcode ✓"
    )
    await insert_transaction(
        app, books.id, "adjustment", [(c.account_id, -6), (a.account_id, 10), (b.account_id, -4)]
    )
    await insert_transaction(app, books.id, "transfer", [(b.account_id, 3), (c.account_id, -3)])
    monkeypatch.setattr(seals, "BLOCK_SIZE", 3)
    async with read_snapshot(app.state.engine) as session:
        latest = await session.scalar(
            select(LedgerSeal).order_by(LedgerSeal.high_water.desc()).limit(1)
        )
        assert latest is not None
        low, high = latest.high_water, int(await session.scalar(select(func.max(Entry.id))) or 0)
        plan = await seals.plan_verification(session, latest, False)
        try:
            assert plan.fresh is not None
            assert plan.fresh.read is not None
            for span_low, span_high in ((low, high), (low, high - 1), (low + 2, high)):
                from_rows = seals.span_from_rows(plan.fresh.read, span_low, span_high)
                assert from_rows == await seals.digest_span(session, span_low, span_high)
            whole = seals.span_from_rows(plan.fresh.read, low, high)
            assert whole is not None
            assert len(whole.block_digests) == 3  # (7 entries in blocks of 3)
            # (The rows hold only the entries above the last seal's mark.)
            assert seals.span_from_rows(plan.fresh.read, low - 1, high) is None
            assert await seals.confirm_plan(session, plan) is plan
        finally:
            plan.abandon()


def _row(columns: tuple[str, ...], fields: dict[str, Any]) -> tuple[Any, ...]:
    """A row as the plan's statements give it: its columns in their order (the code reads them
    by position), None for those not given."""
    return tuple(fields.get(column) for column in columns)


def _entry(entry_id: int, transaction_id: uuid.UUID, **changed: Any) -> dict[str, Any]:
    row = {
        "id": entry_id,
        "transaction_id": transaction_id,
        "account_id": uuid.UUID(int=entry_id),
        "amount": entry_id * (1 if entry_id % 2 else -1),
        "balance_after": entry_id,
        "account_version": entry_id,
    }
    return row | changed


def test_rows_that_do_not_say_the_same_for_certain_leave_the_span_to_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """span_from_rows digests only what the rows show for certain; a doubled entry id, an
    entry whose transaction was not looked up, or was found twice or without a hash, or a
    field left NULL, is left to digest_span."""
    monkeypatch.setattr(seals, "BLOCK_SIZE", 2)
    one, two, three = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    transactions = [{"id": one, "content_hash": "a" * 64}, {"id": two, "content_hash": "b" * 64}]
    entries = [_entry(14, two), _entry(11, one), _entry(12, one), _entry(13, two), _entry(9, one)]

    def read(rows: list[dict[str, Any]], found: list[dict[str, Any]] = transactions) -> Any:
        return seals.RowsRead(
            10,
            [_row(seals.ENTRY_COLUMNS, row) for row in rows],
            [_row(seals.TRANSACTION_COLUMNS, row) for row in found],
            {one, two, three},
        )

    span = seals.span_from_rows(read(entries), 10, 13)
    assert span is not None
    lines = [
        seals.canonical_entry(SimpleNamespace(**_entry(i, t), content_hash=h))
        for i, t, h in ((11, one, "a" * 64), (12, one, "a" * 64), (13, two, "b" * 64))
    ]
    assert span.block_digests == [
        hashlib.sha256(lines[0] + lines[1]).hexdigest(),
        hashlib.sha256(lines[2]).hexdigest(),
    ]
    assert (span.entry_count, span.first_entry_of_block) == (3, [11, 13])
    assert seals.span_from_rows(read([]), 10, 13) == seals.SealSpan(low=10, high=13)
    assert seals.span_from_rows(read(entries), 9, 13) is None  # below the rows read
    for wrong in (
        [*entries, _entry(12, one)],  # an id twice
        [*entries, _entry(12, uuid.uuid4())],  # a transaction not looked up
        [_entry(11, three)],  # looked up, not found
        [_entry(11, one, amount=None)],
        [_entry(11, one, account_id=None)],
        [_entry(11, one, balance_after=None)],
        [_entry(11, one, account_version=None)],
    ):
        assert seals.span_from_rows(read(wrong), 10, 13) is None
    twice = [*transactions, {"id": one, "content_hash": "a" * 64}]
    assert seals.span_from_rows(read(entries, twice), 10, 13) is None
    unhashed = [{"id": one, "content_hash": None}]
    assert seals.span_from_rows(read([_entry(11, one)], unhashed), 10, 13) is None


def test_new_transactions_read_are_hashed_as_the_posting_engine_hashes_them() -> None:
    """The fresh transactions checked from the plan's rows (two lines, the usual case, take a
    path of their own) get the digest transaction_content_hash gives, whatever the order of
    their lines, and are named when a line is missing, zero or off balance."""
    community = uuid.uuid4()
    low, high = uuid.UUID(int=1), uuid.UUID(int=2)
    cases = {  # transaction -> its lines, in entry order
        uuid.uuid4(): [(low, 5), (high, -5)],
        uuid.uuid4(): [(high, 5), (low, -5)],
        uuid.uuid4(): [(low, 5), (low, -5)],  # (one account twice: entry order kept)
        uuid.uuid4(): [(high, -3), (low, 1), (high, 2)],
        uuid.uuid4(): [(high, 0), (low, 0)],
        uuid.uuid4(): [(low, 4), (high, -3)],
        uuid.uuid4(): [(low, 4)],
    }
    entries: list[tuple[Any, ...]] = []
    read: dict[uuid.UUID, tuple[Any, ...]] = {}
    for transaction_id, lines in cases.items():
        head = [str(transaction_id), str(community), "transfer", "2026-01-02", "", "memo"]
        stored = checks.transaction_content_hash(
            transaction_id, community, "transfer", "2026-01-02", None, "memo", lines
        )
        fields = {"id": transaction_id, "head": "\x1f".join(head), "content_hash": stored}
        read[transaction_id] = _row(seals.TRANSACTION_COLUMNS, fields)
        for account, minutes in lines:
            entry = {
                "id": 100 + len(entries),
                "transaction_id": transaction_id,
                "account_id": account,
                "amount": minutes,
            }
            entries.append(_row(seals.ENTRY_COLUMNS, entry))
    fresh = seals.Fresh(
        entry_ids=[],
        transaction_ids=list(cases),
        transaction_kinds={},
        entry_ids_to_rehash=[],
        chain_starts={},
        window=seals.Window(3, 2**31),
        high_water=0,
        transactions_read=read,
        entries_read=entries[::-1],  # (read in another order than the ids')
    )
    named = {row.id: row for row in checks._transactions_read(fresh)}
    ids = list(cases)
    assert set(named) == {ids[4], ids[5], ids[6]}
    assert all(row.recomputed == row.content_hash for row in named.values())
    assert (named[ids[4]].zeros, named[ids[5]].total, named[ids[6]].entries) == (2, 1, 1)


async def test_transaction_rows_read_by_a_range_of_ids_are_those_looked_up_one_by_one(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan reads the transactions it looks for by one range of the primary key: the
    rows kept are those the look-ups one by one find; a range holding many more rows than
    ids is left to the look-ups."""
    books = await scenario(client, app)
    window = seals.Window(3, 2**31)
    predicates, params = seals._predicates(window, window)
    wanted = {uuid.UUID(books.transfers[1]), uuid.UUID(books.transfers[3]), uuid.uuid4()}
    async with read_snapshot(app.state.engine) as session:
        in_range = await seals._by_id_range(session, {*wanted, None}, predicates, params)
        one_by_one = await seals._fetch(
            session,
            seals._CANDIDATES["transactions"].format(
                columns=seals._CENSUS_TABLES["transactions"], **predicates
            ),
            params | {"ids": list(wanted), "limit": 100},
        )
        assert in_range is not None
        assert len(in_range) == 2
        assert sorted(tuple(r) for r in in_range) == sorted(tuple(r) for r in one_by_one)
        assert await seals._by_id_range(session, {None}, predicates, params) == []
        ids = sorted(
            (await session.execute(text("SELECT id FROM transactions ORDER BY id"))).scalars()
        )
        monkeypatch.setattr(seals, "RANGE_SLACK", 0)
        assert len(ids) > 4
        assert await seals._by_id_range(session, {ids[0], ids[-1]}, predicates, params) is None


async def test_a_census_scan_that_fails_stops_the_other_tables_scan() -> None:
    """The two tables are counted on two connections; should one scan fail, waiting for the
    counts raises its error and the other scan is stopped, not left running."""
    other = asyncio.ensure_future(asyncio.sleep(10))

    async def fails() -> seals.TableCount:
        raise RuntimeError("the scan failed")

    async def begin() -> dict[str, Any]:
        return {"entries": asyncio.ensure_future(fails()), "transactions": other}

    counting = seals.CensusCount(begin)
    with pytest.raises(RuntimeError, match="the scan failed"):
        await counting.counts()
    with pytest.raises(asyncio.CancelledError):
        await other


async def test_the_census_scan_is_on_its_way_before_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_count_beside returns once each table's statement has been sent, or its scan has
    ended (a scan that fails before it sends returns at once, and waiting for the counts
    raises its error); should the run be stopped while it waits, both scans are stopped."""
    started: list[str] = []
    made: list[asyncio.Task[Any]] = []

    async def beside(session: Any, work: Any, **settings: Any) -> asyncio.Task[Any]:
        made.append(asyncio.ensure_future(work(None)))
        return made[-1]

    async def count(connection: Any, *args: Any, **more: Any) -> seals.TableCount:
        started.append(more["table"])
        if more["table"] == "entries":
            raise RuntimeError("the scan failed")
        more["sent"].set()
        await asyncio.sleep(10)
        raise AssertionError("not stopped")

    monkeypatch.setattr(seals, "beside", beside)
    monkeypatch.setattr(seals, "_count", count)
    tasks = await seals._count_beside(cast(Any, None), {}, {}, True, False)
    assert started == ["entries", "transactions"]
    assert tasks["entries"].done()
    assert not tasks["transactions"].done()  # (sent, and counting)
    with pytest.raises(RuntimeError, match="the scan failed"):
        await seals.CensusCount(lambda: asyncio.sleep(0, tasks)).counts()
    with pytest.raises(asyncio.CancelledError):
        await tasks["transactions"]

    async def never_sent(connection: Any, *args: Any, **more: Any) -> seals.TableCount:
        await asyncio.sleep(10)
        raise AssertionError("not stopped")

    monkeypatch.setattr(seals, "_count", never_sent)
    waiting = asyncio.ensure_future(seals._count_beside(cast(Any, None), {}, {}, True, False))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    waiting.cancel()
    for task in (waiting, *made[2:]):
        with pytest.raises(asyncio.CancelledError):
            await task

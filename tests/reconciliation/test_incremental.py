"""Incremental verification (PostgreSQL): after a sealed run, the next run re-hashes only rows
written since, and still catches every kind of change made behind the service; a full
verification is there on request and on a schedule (docs/seals.md)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.ledger.posting import Poster, PostingRequest, post_transactions
from app.models import Community
from app.models.ledger import TransactionKind
from app.reconciliation import checks, seals
from tests.factories import expect
from tests.ledger.helpers import post
from tests.reconciliation.helpers import (
    Scenario,
    db_id,
    failing,
    insert_transaction,
    reconcile,
    record_exchange,
    scalar,
    scenario,
    tamper,
)

pytestmark = pytest.mark.anyio

postgres_only = pytest.mark.postgres_only


def verification(run: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = run["report"]["verification"]
    return found


async def sealed(client: AsyncClient, app: FastAPI) -> Scenario:
    books = await scenario(client, app)
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", failing(run)
    assert run["report"]["seal"] is not None
    return books


async def seal_a_posting(client: AsyncClient, books: Scenario, minutes: int) -> None:
    """The first member earns ``minutes`` from the second; a run checks the posting
    incrementally, passes, and seals it."""
    a, b = books.members[0], books.members[1]
    await post(client, books.id, books.admin, [(a.account_id, minutes), (b.account_id, -minutes)])
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", failing(run)
    assert verification(run)["mode"] == "incremental"


@postgres_only
async def test_after_a_seal_runs_verify_incrementally_and_full_on_request(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await sealed(client, app)
    a, b = books.members[0], books.members[1]
    again = await reconcile(client, books.platform)
    assert again["status"] == "passed", failing(again)
    assert verification(again)["mode"] == "incremental"
    assert verification(again)["fresh_entries"] == 0
    assert again["report"]["sealed_entries_verified"] == again["report"]["high_water"]
    # The readable report says how they were verified: by the census, not by re-hashing.
    readable = await client.get(
        f"/v1/admin/reconciliations/{again['id']}",
        headers={**books.platform.headers, "Accept": "text/plain"},
    )
    assert "only blocks holding rows written since were re-hashed" in readable.text
    assert "verification: incremental" in readable.text

    # Postings since the seal are fresh: checked, then sealed by the next run.
    await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    posted = await reconcile(client, books.platform)
    assert posted["status"] == "passed", failing(posted)
    assert verification(posted) | {"reason": ""} == {
        "mode": "incremental",
        "reason": "",
        "fresh_entries": 2,
        "fresh_transactions": 1,
    }
    assert posted["report"]["seal"]["entries"] == 2

    full = await reconcile(client, books.platform, full=True)
    assert full["status"] == "passed"
    assert full["full_requested"] is True
    assert verification(full) == {"mode": "full", "reason": "A full verification was requested."}
    assert full["report"]["sealed_entries_verified"] == posted["report"]["seal"]["high_water"]


async def test_sqlite_and_scoped_runs_verify_in_full(client: AsyncClient, app: FastAPI) -> None:
    books = await sealed(client, app)
    scoped = await reconcile(client, books.platform, community_id=books.id)
    assert verification(scoped)["mode"] == "full"
    whole = await reconcile(client, books.platform)
    expected = "full" if app.state.engine.dialect.name == "sqlite" else "incremental"
    assert verification(whole)["mode"] == expected


@postgres_only
async def test_a_full_verification_is_scheduled(client: AsyncClient, app: FastAPI) -> None:
    """TIMEBANK_RECONCILIATION_FULL_VERIFICATION_DAYS sets how old the last full verification
    may be; 0 makes every whole-ledger run a full one."""
    books = await sealed(client, app)
    assert verification(await reconcile(client, books.platform))["mode"] == "incremental"

    app.state.settings = app.state.settings.model_copy(
        update={"reconciliation_full_verification_days": 0}
    )
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed"
    assert verification(run)["mode"] == "full"
    assert verification(run)["reason"].startswith("Scheduled")


@postgres_only
async def test_an_edited_sealed_entry_sends_the_run_to_full_and_names_its_block(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seals, "BLOCK_SIZE", 4)
    books = await sealed(client, app)
    await tamper(app, "UPDATE entries SET amount = amount + 1 WHERE id = 10")
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    assert verification(run)["mode"] == "full"
    assert "rewritten or deleted" in verification(run)["reason"]
    [report] = run["report"]["tampering"]
    assert (report["first_bad_block"], report["entries_from"]) == (2, 9)
    assert "content_hashes" in failing(run)


@postgres_only
async def test_a_deleted_sealed_entry_is_caught(client: AsyncClient, app: FastAPI) -> None:
    books = await sealed(client, app)
    await tamper(app, "DELETE FROM entries WHERE id = 3")
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    [report] = run["report"]["tampering"]
    assert report["first_bad_block"] == 0
    assert report["expected"]["entry_count"] == report["found"]["entry_count"] + 1
    assert {"transactions_balance", "balance_after_chain"} <= set(failing(run))


@postgres_only
async def test_a_deleted_transaction_row_is_caught(client: AsyncClient, app: FastAPI) -> None:
    books = await sealed(client, app)
    await tamper(app, "DELETE FROM transactions WHERE id = :id", id=db_id(app, books.transfers[0]))
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    assert verification(run)["mode"] == "full"
    # Its entries no longer join to a transaction: the sealed block changed.
    assert run["report"]["tampering"][0]["first_bad_block"] == 0


@postgres_only
async def test_an_edited_memo_is_caught_and_reported_as_tampering(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await sealed(client, app)
    await tamper(
        app,
        "UPDATE transactions SET memo = 'nothing to see' WHERE id = :id",
        id=db_id(app, books.transfers[3]),
    )
    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"content_hashes"}
    assert found["content_hashes"][0]["rows"] == {"transaction_id": books.transfers[3]}
    # The memo is not in the seal's blocks; the census says a row it saw was rewritten.
    [report] = run["report"]["tampering"]
    assert report["first_bad_block"] is None
    assert report["expected"]["transactions"] == report["found"]["transactions"] + 1
    assert "rewritten or deleted" in report["message"]


async def _seal_past_an_id_gap(
    client: AsyncClient, app: FastAPI, books: Scenario
) -> tuple[int, dict[str, Any]]:
    """Leave a gap in the entry ids (as a rolled-back posting does), post, and seal past it."""
    a, b = books.members[0], books.members[1]
    gap = int(await scalar(app, "SELECT nextval('entries_id_seq')"))
    await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", failing(run)
    return gap, run


async def _forge_an_entry_into(app: FastAPI, books: Scenario, gap: int) -> None:
    """Fill the id gap behind the service with a transaction that balances on its own."""
    a, b = books.members[0], books.members[1]
    forged = await insert_transaction(
        app, books.id, "adjustment", [(a.account_id, 1), (b.account_id, -1)]
    )
    await tamper(
        app,
        "UPDATE entries SET id = :gap WHERE id = (SELECT min(id) FROM entries "
        "WHERE transaction_id = :forged)",
        gap=gap,
        forged=db_id(app, forged),
    )


@postgres_only
async def test_a_copy_of_a_sealed_transaction_is_caught_incrementally(
    client: AsyncClient, app: FastAPI
) -> None:
    """Only fresh transactions that the sealing run may have seen have their entries looked
    up for re-hashing; a second row under a sealed transaction's id (through a child table,
    nothing deleted, every old row intact) is one of them: its sealed entries now join two
    transaction rows, and their block is re-digested and named."""
    books = await sealed(client, app)
    await tamper(
        app,
        "CREATE TABLE transactions_shadow () INHERITS (transactions)",
        "INSERT INTO transactions_shadow SELECT * FROM ONLY transactions "
        "WHERE id = CAST(:old AS uuid)",
        old=db_id(app, books.transfers[0]),
    )
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    assert verification(run)["mode"] == "incremental"
    [report] = run["report"]["tampering"]
    assert "changed behind the service" in report["message"]


@postgres_only
async def test_a_row_inserted_below_the_sealed_mark_is_caught_incrementally(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await scenario(client, app)
    gap, first = await _seal_past_an_id_gap(client, app, books)
    assert first["report"]["seal"]["high_water"] > gap

    await _forge_an_entry_into(app, books, gap)
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    assert verification(run)["mode"] == "incremental"
    [report] = run["report"]["tampering"]
    assert report["first_bad_block"] == 0
    assert "changed behind the service" in report["message"]


@postgres_only
async def test_an_edited_census_breaks_the_chained_digest(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await sealed(client, app)
    # Deleting an entry and lowering the census count to match must not pass unseen.
    await tamper(
        app,
        "DELETE FROM entries WHERE id = 3",
        "UPDATE ledger_seals SET census = jsonb_set(census, '{entries,before}', "
        "to_jsonb((census->'entries'->>'before')::int - 1))",
    )
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    messages = [t["message"] for t in run["report"]["tampering"]]
    assert any("seal record itself was altered" in m for m in messages)


@postgres_only
async def test_frozen_rows_keep_their_xmin_and_raise_no_alarm(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await sealed(client, app)
    async with app.state.engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        before = (
            await connection.execute(text("SELECT xmin::text FROM entries WHERE id = 1"))
        ).scalar()
        await connection.execute(text("VACUUM (FREEZE) entries"))
        await connection.execute(text("VACUUM (FREEZE) transactions"))
        after = (
            await connection.execute(text("SELECT xmin::text FROM entries WHERE id = 1"))
        ).scalar()
    # PostgreSQL >= 9.4 freezes by a flag and keeps the raw xmin (not FrozenTransactionId, 2).
    assert after == before != "2"
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", (failing(run), run["report"]["tampering"])
    assert verification(run)["mode"] == "incremental"
    assert verification(run)["fresh_entries"] == 0

    # And a change after freezing is still seen.
    await tamper(app, "UPDATE entries SET balance_after = balance_after + 1 WHERE id = 5")
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    assert set(failing(run)) == {"balance_after_chain"}
    assert run["report"]["tampering"][0]["first_bad_block"] == 0


@postgres_only
async def test_a_census_from_another_database_sends_the_run_to_full(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await sealed(client, app)
    # As after a restore into another cluster: the xids in the census mean nothing here. The
    # census is folded into the chain, so rewrite the chain along with it (as a restore that
    # brought the seals along would have it unchanged; only the identity differs).
    seal = await scalar(app, "SELECT id FROM ledger_seals")
    census = await scalar(app, "SELECT census FROM ledger_seals")
    census["identity"]["system"] = "0"
    row = await _seal_row(app, seal)
    forged = seals.chain(seals.GENESIS, row["digest"], row["high_water"], census)
    await tamper(
        app,
        "UPDATE ledger_seals SET census = CAST(:census AS jsonb), chained_digest = :chained",
        census=seals.canonical_census(census).decode(),
        chained=forged,
    )
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", (failing(run), run["report"]["tampering"])
    assert verification(run) == {
        "mode": "full",
        "reason": "The database or its ledger tables are not those the census saw (restored, "
        "upgraded or rewritten in place).",
    }


async def _seal_row(app: FastAPI, seal_id: Any) -> dict[str, Any]:
    async with app.state.engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT digest, high_water FROM ledger_seals WHERE id = :id"),
                {"id": seal_id},
            )
        ).one()
    return {"digest": row.digest, "high_water": row.high_water}


@postgres_only
async def test_fresh_classification_is_circular_and_never_counts_special_xids(
    app: FastAPI,
) -> None:
    """The SQL predicate itself, on xids around the 2^32 wrap and away from it (the window
    [P, P + 2^31) is then one range of xidsend() bytes, or two)."""
    wrapping = 2**32 - 10
    cases = {
        wrapping: {
            wrapping: True,
            wrapping + 9: True,
            5: True,  # written after the wrap: still after the reference
            2**31 - 11: True,  # the last xid that still follows
            2**31 - 10: False,  # half the circle away: precedes
            wrapping - 1: False,
            3: True,
            2: False,  # FrozenTransactionId (pre-9.4 freezing) is never fresh
            1: False,
        },
        1000: {
            1000: True,
            999: False,
            2**31 + 999: True,
            2**31 + 1000: False,
            2**32 - 1: False,
            3: False,
            2: False,
        },
    }
    async with app.state.engine.connect() as connection:
        for reference, expectations in cases.items():
            fresh, params = seals.fresh_predicate("reference", reference)
            for xmin, expected in expectations.items():
                found = await connection.scalar(
                    text(
                        f"SELECT {fresh} FROM (SELECT CAST(CAST(:x AS text) AS xid) AS xmin) AS r"
                    ),
                    {"x": str(xmin), **params},
                )
                assert found is expected, (reference, xmin)


@postgres_only
async def test_a_census_window_with_an_end_of_its_own_is_one_range_or_two(app: FastAPI) -> None:
    """A window narrower than half the circle (a run that keeps the last census's end):
    [P, E), one range of xidsend() bytes, or two when it wraps past 2^32."""
    cases = {
        seals.Window(1000, 1000 + 2**30): {1000: True, 2**30 + 999: True, 2**30 + 1000: False},
        seals.Window(2**32 - 10, 2**32 + 2**30): {
            2**32 - 10: True,
            5: True,
            2**30 - 1: True,
            2**30: False,  # past the end, though within half the circle of P
            2**32 - 11: False,
            2: False,
        },
    }
    async with app.state.engine.connect() as connection:
        for window, expectations in cases.items():
            fresh, params = window.predicate("reference")
            for xmin, expected in expectations.items():
                found = await connection.scalar(
                    text(
                        f"SELECT {fresh} FROM (SELECT CAST(CAST(:x AS text) AS xid) AS xmin) AS r"
                    ),
                    {"x": str(xmin % 2**32), **params},
                )
                assert found is expected, (window, xmin)


def test_a_runs_census_window_nests_in_the_last_while_room_is_left() -> None:
    last = seals.Window(1000, 1000 + 2**31)
    nested = last.next_from(5000)
    assert nested == seals.Window(5000, 1000 + 2**31)
    assert last.holds(nested)
    # Less than MAX_XID_DISTANCE left before the end (or a reference behind the last one):
    # a whole new window, and the census scan classifies each row to both.
    late = 1000 + 2**31 - seals.MAX_XID_DISTANCE + 1
    assert last.next_from(late) == seals.Window(late, late + 2**31)
    assert not last.holds(last.next_from(late))
    assert last.next_from(999) == seals.Window(999, 999 + 2**31)
    # A census from before windows had ends: P + 2^31.
    assert seals.Window.of({"reference": 7}) == seals.Window(7, 7 + 2**31)


def test_the_census_scan_looks_xmin_up_in_a_set_only_where_that_is_the_window() -> None:
    """The set of xids [P, horizon) says what the window [P, E) says of every row a snapshot
    with that horizon sees only while no xid has wrapped: horizon <= E <= 2^32. Elsewhere,
    and beyond XID_SET_LIMIT xids, the census scan compares ranges."""
    window = seals.Window(1000, 1000 + 2**31)
    assert seals.xid_set_predicate(window, 1004) == (
        "r.xmin = ANY('{" + ",".join(["1000,1001,1002,1003"] * 3) + "}'::xid[])"
    )
    assert seals.xid_set_predicate(window, 1000) == "false"  # nothing written since P
    # (The special xids 0-2 are never fresh, as in the range.)
    assert seals.xid_set_predicate(seals.Window(1, 2**31), 5) == (
        "r.xmin = ANY('{" + ",".join(["3,4"] * 5) + "}'::xid[])"
    )
    # A set shorter than PostgreSQL hashes is repeated up to that size; a longer one is not.
    for horizon, elements in ((1001, 9), (1008, 16), (1009, 9), (1030, 30)):
        predicate = seals.xid_set_predicate(window, horizon)
        assert predicate is not None
        xids = predicate.split("'{")[1].split("}'")[0].split(",")
        assert set(xids) == {str(xid) for xid in range(1000, horizon)}
        assert len(xids) == elements
    limit = seals.XID_SET_LIMIT
    assert seals.xid_set_predicate(window, 1000 + limit) is not None
    assert seals.xid_set_predicate(window, 1000 + limit + 1) is None
    assert seals.xid_set_predicate(window, 999) is None  # a horizon behind the window
    assert seals.xid_set_predicate(window, window.end + 1) is None
    # A window reaching past 2^32: a row's raw xmin may be that of an xid from before the
    # wrap, which the range's second part counts as fresh; the set would not.
    late = seals.Window(2**31 + 10, 2**32 + 10)
    assert seals.xid_set_predicate(late, late.start + 5) is None
    assert seals.xid_set_predicate(seals.Window(2**31, 2**32), 2**31 + 5) is not None
    # A cluster past 2^32 xids: raw xmins repeat, the set is not the range.
    assert seals.xid_set_predicate(seals.Window(2**32 + 10, 2**32 + 2**31), 2**32 + 15) is None


@postgres_only
async def test_the_xid_set_counts_the_rows_the_window_counts(
    client: AsyncClient, app: FastAPI
) -> None:
    """On real rows, inside one snapshot: the census scan's set of xids and the window's range
    count the same rows of entries and transactions, for the last census's window (old and
    fresh rows both present), a later one, and one that starts at the horizon (no rows)."""
    books = await sealed(client, app)
    census = await scalar(app, "SELECT census FROM ledger_seals ORDER BY high_water LIMIT 1")
    a, b = books.members[0], books.members[1]
    await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    await reconcile(client, books.platform)
    later = await scalar(app, "SELECT census FROM ledger_seals ORDER BY high_water DESC LIMIT 1")
    await post(client, books.id, books.admin, [(b.account_id, 3), (a.account_id, -3)])
    async with app.state.engine.connect() as connection:
        snapshot = await connection.execution_options(isolation_level="REPEATABLE READ")
        async with snapshot.begin():
            horizon = int(
                await snapshot.scalar(
                    text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                )
            )
            first = seals.Window.of(census)
            windows = [first, seals.Window(later["reference"], first.end)]
            windows.append(seals.Window(horizon, horizon + 2**31))
            for window in windows:
                listed = seals.xid_set_predicate(window, horizon)
                assert listed is not None
                ranged, params = window.predicate("reference")
                for table in ("entries", "transactions"):
                    by_set, by_range, rows = (
                        await snapshot.execute(
                            text(
                                f"SELECT count(*) FILTER (WHERE {listed}), "
                                f"count(*) FILTER (WHERE {ranged}), count(*) FROM {table} r"
                            ),
                            params,
                        )
                    ).one()
                    assert by_set == by_range, (window, table)
                    if window is first:
                        assert 0 < by_set < rows  # (old rows and fresh ones)
                    if window.start == horizon:
                        assert by_set == 0


@postgres_only
@pytest.mark.parametrize("predicate", ["xid set", "range"])
async def test_the_census_scan_catches_a_rewrite_by_either_predicate(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch, predicate: str
) -> None:
    """A sealed row rewritten behind the service after the last census (a new xmin, in the
    census's window) is counted as fresh by the census scan, whichever form its predicate
    takes, so the old rows fall short of the census: caught, and verified in full. The
    windows nest, so the scan takes its counts from the scan node (_FILTERED_COUNT)."""
    monkeypatch.setattr(seals, "XID_SET_LIMIT", 10**6 if predicate == "xid set" else -1)
    scans: list[str] = []
    count = seals._count
    from_the_scan_node: list[tuple[int, int] | None] = []
    filtered_counts = seals.filtered_counts

    def counted(plan: Any) -> tuple[int, int] | None:
        from_the_scan_node.append(filtered_counts(plan))
        return from_the_scan_node[-1]

    monkeypatch.setattr(seals, "filtered_counts", counted)

    async def spy(connection: Any, predicates: dict[str, str], **more: Any) -> seals.TableCount:
        scans.append(predicates["fresh"])
        return await count(connection, predicates, **more)

    monkeypatch.setattr(seals, "_count", spy)
    books = await sealed(client, app)
    await seal_a_posting(client, books, 5)
    await tamper(
        app,
        "UPDATE transactions SET memo = 'nothing to see' WHERE id = :id",
        id=db_id(app, books.transfers[0]),
    )
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    assert verification(run)["mode"] == "full"
    assert "rewritten or deleted" in verification(run)["reason"]
    # (Two runs, each scanning both tables.)
    assert [("xmin = ANY" in scan) for scan in scans] == [predicate == "xid set"] * 4
    assert len(from_the_scan_node) == 4
    assert None not in from_the_scan_node


@postgres_only
async def test_the_counts_from_the_scan_node_are_the_aggregates(
    client: AsyncClient, app: FastAPI
) -> None:
    """On real rows, inside one snapshot: the census scan's counts taken from the scan node
    (_FILTERED_COUNT, nested windows) are those of the aggregate (_COUNTS), every row and the
    fresh ones, for both tables, with either predicate (set of xids, range), for the last
    census's window and for one that starts at the latest posting's xid."""
    books = await sealed(client, app)
    census = await scalar(app, "SELECT census FROM ledger_seals ORDER BY high_water LIMIT 1")
    a, b = books.members[0], books.members[1]
    await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    async with app.state.engine.connect() as connection:
        snapshot = await connection.execution_options(isolation_level="REPEATABLE READ")
        async with snapshot.begin():
            await snapshot.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
            horizon = int(
                await snapshot.scalar(
                    text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                )
            )
            first = seals.Window.of(census)
            for window in (first, seals.Window(horizon - 1, first.end)):
                listed = seals.xid_set_predicate(window, horizon)
                ranged, params = window.predicate("reference")
                assert listed is not None
                assert listed != "false"
                for predicate, values in ((listed, {}), (ranged, params)):
                    for table in ("entries", "transactions"):
                        counted = await seals._count(
                            snapshot,
                            {"fresh": predicate},
                            values,
                            nested=True,
                            exchanges=False,
                            table=table,
                            sent=asyncio.Event(),
                        )
                        rows, fresh = (
                            await snapshot.execute(
                                text(
                                    f"SELECT count(*), count(*) FILTER (WHERE {predicate}) "
                                    f"FROM {table} r"
                                ),
                                values,
                            )
                        ).one()
                        assert (counted.rows, counted.fresh) == (rows, fresh), (window, table)
                        assert 0 < fresh < rows  # (old rows and fresh ones)


def test_counts_are_taken_from_the_scan_node_only_when_it_is_the_whole_plan() -> None:
    """filtered_counts reads one sequential scan executed once; any other plan (workers, whose
    nodes report rows per loop, or no scan at all) is left to the aggregate."""
    scan = {"Node Type": "Seq Scan", "Actual Rows": 3, "Actual Loops": 1}
    assert seals.filtered_counts(json.dumps([{"Plan": scan | {"Rows Removed by Filter": 97}}]))
    assert seals.filtered_counts([{"Plan": scan | {"Rows Removed by Filter": 97}}]) == (100, 3)
    assert seals.filtered_counts([{"Plan": scan}]) is None  # (no filter)
    # (PostgreSQL 18 prints rows with two decimals.)
    printed = {"Actual Rows": 3.0, "Rows Removed by Filter": 97.0}
    assert seals.filtered_counts([{"Plan": scan | printed}]) == (100, 3)
    halves = {"Actual Rows": 2.5, "Rows Removed by Filter": 97.0}
    assert seals.filtered_counts([{"Plan": scan | halves}]) is None
    workers = scan | {"Actual Loops": 3, "Rows Removed by Filter": 32}
    gather = {"Node Type": "Gather", "Actual Rows": 3, "Actual Loops": 1, "Plans": [workers]}
    assert seals.filtered_counts([{"Plan": gather}]) is None
    assert seals.filtered_counts([{"Plan": workers}]) is None
    nothing = {"Node Type": "Result", "Actual Rows": 0, "Actual Loops": 1}
    assert seals.filtered_counts([{"Plan": nothing}]) is None


@postgres_only
@pytest.mark.parametrize("windows", ["nested", "renewed"])
async def test_rows_sealed_by_a_later_census_are_held_to_it(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch, windows: str
) -> None:
    """A posting fresh to one census is old to the next one, which counts it: rewriting it
    afterwards is caught, whether the next census kept the last one's window end (nested:
    the scan counts fresh rows to the last census only) or started a window of its own."""
    if windows == "renewed":  # no room is ever left: every census starts a new window
        monkeypatch.setattr(seals, "MAX_XID_DISTANCE", 2**31 - 1)
    books = await sealed(client, app)
    first = await scalar(app, "SELECT census FROM ledger_seals ORDER BY high_water LIMIT 1")
    a, b = books.members[0], books.members[1]
    await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    posted = await reconcile(client, books.platform)
    assert posted["status"] == "passed", failing(posted)
    assert verification(posted)["mode"] == "incremental"
    second = await scalar(app, "SELECT census FROM ledger_seals ORDER BY high_water DESC LIMIT 1")
    assert second["reference"] > first["reference"]
    kept_end = second["window_end"] == first["window_end"]
    assert kept_end is (windows == "nested")
    again = await reconcile(client, books.platform)  # (nothing new: nothing sealed)
    assert again["status"] == "passed"
    assert verification(again)["mode"] == "incremental"

    newest = await scalar(app, "SELECT max(id) FROM entries")
    await tamper(app, "UPDATE entries SET amount = amount + 1 WHERE id = :id", id=newest)
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    assert verification(run)["mode"] == "full"
    assert "rewritten or deleted" in verification(run)["reason"]
    assert run["report"]["tampering"]


async def _commit_an_xid(app: FastAPI) -> None:
    """Complete a transaction, so the snapshot's xmax moves past every xid taken so far."""
    async with app.state.engine.begin() as connection:
        await connection.execute(text("SELECT pg_current_xact_id()"))


@postgres_only
async def test_the_census_reference_waits_for_writers_of_this_database_only(
    app: FastAPI, database_url: str
) -> None:
    other = create_async_engine(database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        async with app.state.engine.connect() as here, other.connect() as elsewhere:
            # A transaction elsewhere on the server holds an xid: no concern of ours.
            far = int(await elsewhere.scalar(text("SELECT pg_current_xact_id()::text::bigint")))
            await _commit_an_xid(app)
            async with app.state.engine.connect() as probe:
                assert (await seals.census_reference(probe) or 0) > far
            # A transaction of this database that holds an xid may still write anything.
            near = int(await here.scalar(text("SELECT pg_current_xact_id()::text::bigint")))
            await _commit_an_xid(app)
            async with app.state.engine.connect() as probe:
                assert await seals.census_reference(probe) == near
    finally:
        await other.dispose()


@postgres_only
async def test_a_rewrite_in_flight_while_a_run_seals_is_caught_by_the_next_run(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await sealed(client, app)
    a, b = books.members[0], books.members[1]
    async with app.state.engine.connect() as forger:
        await forger.execute(text("SET LOCAL session_replication_role = replica"))
        await forger.execute(
            text("UPDATE transactions SET memo = 'rewritten' WHERE id = :id"),
            {"id": books.transfers[0]},
        )
        # A run seals new postings while the rewrite is uncommitted (invisible to it).
        await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
        during = await reconcile(client, books.platform)
        assert during["status"] == "passed", failing(during)
        assert during["report"]["seal"] is not None
        await forger.commit()
    after = await reconcile(client, books.platform)
    assert after["status"] == "failed"
    assert verification(after)["mode"] == "full"
    assert failing(after)["content_hashes"][0]["rows"] == {"transaction_id": books.transfers[0]}


@postgres_only
async def test_an_older_posting_committed_after_a_newer_one_raises_no_alarm(
    client: AsyncClient, app: FastAPI
) -> None:
    """A posting can hold an older xid than one that committed before it on the same account:
    its entry is then 'old' (not fresh) although its version is above a fresh one."""
    books = await sealed(client, app)
    a, b = books.members[0], books.members[1]
    async with app.state.engine.connect() as older, app.state.engine.connect() as holder:
        await older.execute(text("SELECT pg_current_xact_id()"))
        # A writer that stays open through the next run keeps the census reference below the
        # newer posting's xid, and above the older one's.
        await holder.execute(text("SELECT pg_current_xact_id()"))
        await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
        async with AsyncSession(bind=older) as session:
            community = await session.get(Community, uuid.UUID(books.id))
            assert community is not None
            request = PostingRequest(
                kind=TransactionKind.transfer,
                lines=((uuid.UUID(a.account_id), 7), (uuid.UUID(b.account_id), -7)),
                occurred_on=date.today(),
            )
            await post_transactions(session, community, [request], poster=Poster(), atomic=True)
        await older.commit()  # the session joined the connection's transaction
        sealing = await reconcile(client, books.platform)
        assert sealing["status"] == "passed", failing(sealing)
        assert sealing["report"]["seal"] is not None, sealing["report"]["seal_note"]
    after = await reconcile(client, books.platform)
    assert after["status"] == "passed", (failing(after), after["report"]["tampering"])
    assert verification(after)["mode"] == "incremental"
    assert verification(after)["fresh_entries"] == 2  # the newer posting's


async def _a_forged_chain_break(
    client: AsyncClient, app: FastAPI, books: Scenario, *statements: str
) -> dict[str, list[dict[str, Any]]]:
    """Forge a transfer from the first member to the second, run ``statements`` on it
    (parameters ``id``, the transaction, and ``a``, the first member's account), reconcile:
    the run must be incremental and find only a broken chain."""
    a, b = books.members[0], books.members[1]
    forged = await insert_transaction(
        app, books.id, "transfer", [(a.account_id, 4), (b.account_id, -4)]
    )
    await tamper(app, *statements, id=db_id(app, forged), a=db_id(app, a.account_id))
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    found = failing(run)
    assert set(found) == {"balance_after_chain"}
    return found


@postgres_only
async def test_a_fresh_entry_that_breaks_a_chain_is_named_incrementally(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await sealed(client, app)
    a = books.members[0]
    found = await _a_forged_chain_break(
        client,
        app,
        books,
        "UPDATE entries SET balance_after = balance_after + 3 WHERE transaction_id = :id "
        "AND account_id = :a",
    )
    [broken] = found["balance_after_chain"]
    assert broken["rows"]["account_id"] == a.account_id
    assert broken["found"]["balance_after"] == broken["expected"]["balance_after"] + 3


@postgres_only
async def test_an_entry_added_to_an_old_original_shows_on_its_old_reversal(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await sealed(client, app)
    c = books.members[2]
    await tamper(
        app,
        "INSERT INTO entries (transaction_id, account_id, amount, balance_after, "
        "account_version, posted_at) SELECT :original, id, 9, balance + 9, version + 1, now() "
        "FROM accounts WHERE id = :c",
        original=db_id(app, books.reversed_id),
        c=db_id(app, c.account_id),
    )
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    found = failing(run)
    assert {"transactions_balance", "content_hashes", "reversals"} <= set(found)
    [left_out] = found["reversals"]
    assert left_out["rows"] == {"transaction_id": books.reversal_id, "account_id": c.account_id}


@postgres_only
async def test_fresh_reversals_are_checked_by_the_kind_the_plan_read(
    client: AsyncClient, app: FastAPI
) -> None:
    """A reversal written since the last seal is known as one by the kind its row had when
    the plan read it (not looked up again): a legitimate one raises nothing, one written
    behind the service that does not mirror its original is named as a full run names it."""
    books = await sealed(client, app)
    reversed_now, to_forge = books.transfers[2], books.transfers[3]
    expect(
        await client.post(
            f"/v1/transactions/{reversed_now}/reversal", json={}, headers=books.admin.headers
        ),
        201,
    )
    clean = await reconcile(client, books.platform)
    assert clean["status"] == "passed", failing(clean)
    assert verification(clean)["mode"] == "incremental"
    a, b = books.members[0], books.members[1]
    forged = await insert_transaction(
        app, books.id, "reversal", [(a.account_id, 7), (b.account_id, -7)], reverses_id=to_forge
    )
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    found = failing(run)
    assert set(found) == {"reversals"}
    assert {f["rows"]["transaction_id"] for f in found["reversals"]} == {forged}
    assert _findings(run) == _findings(await reconcile(client, books.platform, full=True))


@postgres_only
async def test_reversals_of_new_transactions_are_found_among_the_fresh_rows(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row naming a transaction that is new since the last seal (its row fresh, the only
    one with its id, not listed by the census) is fresh itself: the run finds the reversals
    of new transactions among the rows its plan read, and looks nothing up through
    reverses_id for them. A legitimate reversal of a new posting raises nothing; one
    written behind the service that does not mirror its new original is named as a full
    run names it. (The statement that looks reversals up is made to fail here: it must not
    be sent when every fresh transaction is new.)"""
    books = await sealed(client, app)
    a, b = books.members[0], books.members[1]
    posted = await post(client, books.id, books.admin, [(a.account_id, 4), (b.account_id, -4)])
    expect(
        await client.post(
            f"/v1/transactions/{posted['id']}/reversal", json={}, headers=books.admin.headers
        ),
        201,
    )
    original = await post(client, books.id, books.admin, [(a.account_id, 6), (b.account_id, -6)])
    forged = await insert_transaction(
        app,
        books.id,
        "reversal",
        [(a.account_id, -5), (b.account_id, 5)],
        reverses_id=original["id"],
    )
    monkeypatch.setattr(checks, "_FRESH_REVERSALS", "SELECT CAST(NULL AS uuid) WHERE 1 / 0 = 1")
    run = await reconcile(client, books.platform, seal=False)
    assert verification(run)["mode"] == "incremental"
    found = failing(run)
    assert set(found) == {"reversals"}
    assert {f["rows"]["transaction_id"] for f in found["reversals"]} == {forged}
    monkeypatch.undo()
    assert _findings(run) == _findings(await reconcile(client, books.platform, full=True))


@postgres_only
async def test_a_fresh_row_of_another_kind_naming_a_reversed_original_is_named_incrementally(
    client: AsyncClient, app: FastAPI
) -> None:
    """With the constraints that tie reverses_id to reversals dropped, a row of another kind
    written behind the service names an original that an old reversal reverses already: the
    full check counts the original as reversed twice, and so does the incremental one (the
    originals that fresh rows name are counted, whatever the rows' kind)."""
    books = await sealed(client, app)
    reversed_before = books.transfers[1]  # (reversed through the API by the scenario)
    await tamper(
        app,
        "ALTER TABLE transactions DROP CONSTRAINT ck_transactions_reversal_has_original",
        "DROP INDEX uq_transactions_reverses_id",  # a partial unique index (migration 0012)
    )
    a, b = books.members[0], books.members[1]
    await insert_transaction(
        app,
        books.id,
        "transfer",
        [(a.account_id, 2), (b.account_id, -2)],
        reverses_id=reversed_before,
    )
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    found = failing(run)
    assert set(found) == {"reversals"}
    [twice] = found["reversals"]
    assert twice["rows"]["transaction_id"] == reversed_before
    assert twice["found"] == 2
    assert _findings(run) == _findings(await reconcile(client, books.platform, full=True))


@postgres_only
@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("MAX_XID_DISTANCE", "Too many transactions since the last seal"),
        ("FRESH_LIMIT", "Too many rows written since the last seal"),
    ],
)
async def test_guards_send_the_run_to_full(
    client: AsyncClient,
    app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    reason: str,
) -> None:
    books = await sealed(client, app)
    a, b = books.members[0], books.members[1]
    await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    monkeypatch.setattr(seals, setting, 0)
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", failing(run)
    assert verification(run)["mode"] == "full"
    assert verification(run)["reason"].startswith(reason)
    # The seal it leaves has a census again, so the next run is incremental once more.
    monkeypatch.undo()
    again = await reconcile(client, books.platform)
    assert verification(again)["mode"] == "incremental"


@postgres_only
async def test_a_seal_without_a_census_is_verified_in_full_then_incrementally(
    client: AsyncClient, app: FastAPI
) -> None:
    """Seals made before incremental verification existed have no census (and the chained
    digest of the time, which leaves it out)."""
    books = await sealed(client, app)
    seal = await scalar(app, "SELECT id FROM ledger_seals")
    row = await _seal_row(app, seal)
    legacy = seals.chain(seals.GENESIS, row["digest"], row["high_water"])
    await tamper(
        app,
        "UPDATE ledger_seals SET census = NULL, chained_digest = :chained",
        chained=legacy,
    )
    a, b = books.members[0], books.members[1]
    await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    first = await reconcile(client, books.platform)
    assert first["status"] == "passed", (failing(first), first["report"]["tampering"])
    assert verification(first) == {"mode": "full", "reason": "The last seal has no census."}
    assert first["report"]["seal"] is not None
    second = await reconcile(client, books.platform)
    assert second["status"] == "passed"
    assert verification(second)["mode"] == "incremental"


@postgres_only
async def test_a_row_inserted_into_a_seal_without_block_starts_is_caught(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await scenario(client, app)
    a, b = books.members[0], books.members[1]
    gap, _ = await _seal_past_an_id_gap(client, app, books)
    # Make the first seal one from before censuses (and block starts) existed.
    seal = await scalar(app, "SELECT id FROM ledger_seals")
    row = await _seal_row(app, seal)
    await tamper(
        app,
        "UPDATE ledger_seals SET census = NULL, chained_digest = :chained",
        chained=seals.chain(seals.GENESIS, row["digest"], row["high_water"]),
    )
    await post(client, books.id, books.admin, [(a.account_id, 3), (b.account_id, -3)])
    second = await reconcile(client, books.platform)
    assert second["status"] == "passed", (failing(second), second["report"]["tampering"])

    await _forge_an_entry_into(app, books, gap)
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    [report] = run["report"]["tampering"]
    assert report["seal_id"] == str(uuid.UUID(str(seal)))
    assert report["first_bad_block"] == 0


@postgres_only
async def test_a_copy_of_a_fresh_row_cannot_stand_in_for_a_deleted_sealed_one(
    client: AsyncClient, app: FastAPI
) -> None:
    """The census counts rows, not ids: a second copy of a new transaction, kept in a table
    that inherits from transactions (no constraint of the ledger touched), must not make up
    for a sealed transaction deleted behind the service."""
    books = await scenario(client, app)
    a, b = books.members[0], books.members[1]
    old = await insert_transaction(
        app, books.id, "transfer", [(a.account_id, 7), (b.account_id, -7)]
    )
    first = await reconcile(client, books.platform)
    assert first["status"] == "passed", failing(first)
    new = await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    await tamper(
        app,
        "CREATE TABLE transactions_shadow () INHERITS (transactions)",
        "INSERT INTO transactions_shadow SELECT * FROM ONLY transactions "
        "WHERE id = CAST(:new AS uuid)",
        "DELETE FROM transactions WHERE id = CAST(:old AS uuid)",
        new=str(new["id"]),
        old=old,
    )
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    assert run["report"]["seal"] is None
    assert verification(run)["mode"] == "full"
    assert "rewritten or deleted" in verification(run)["reason"]
    assert failing(run)["transactions_balance"]


@postgres_only
async def test_a_migration_that_rewrites_a_table_is_not_tampering(
    client: AsyncClient, app: FastAPI
) -> None:
    """An ALTER TABLE that rewrites entries gives every row a new version: the next run
    verifies in full (the table is not the file the census saw) and finds nothing."""
    books = await sealed(client, app)
    async with app.state.engine.begin() as connection:
        await connection.execute(
            text(
                "ALTER TABLE entries ADD COLUMN rewrite_probe timestamptz DEFAULT clock_timestamp()"
            )
        )
        await connection.execute(text("ALTER TABLE entries DROP COLUMN rewrite_probe"))
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", (failing(run), run["report"]["tampering"])
    assert verification(run)["mode"] == "full"
    assert "rewritten in place" in verification(run)["reason"]
    # The next seal records the new table file; from then on runs are incremental again.
    a, b = books.members[0], books.members[1]
    await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    assert (await reconcile(client, books.platform))["report"]["seal"] is not None
    assert verification(await reconcile(client, books.platform))["mode"] == "incremental"


@postgres_only
async def test_cached_figures_are_checked_against_the_seals_account_totals(
    client: AsyncClient, app: FastAPI
) -> None:
    """An incremental run takes each account's figures from the last seal's totals plus the
    fresh entries: postings (several runs in a row) raise no alarm, and a cached balance or
    total edited behind the service is named just as a full run names it."""
    books = await sealed(client, app)
    a, b, c = books.members[0], books.members[1], books.members[2]
    for minutes in (5, 7):
        await post(
            client, books.id, books.admin, [(a.account_id, minutes), (b.account_id, -minutes)]
        )
        await post(client, books.id, books.admin, [(c.account_id, 3), (a.account_id, -3)])
        run = await reconcile(client, books.platform)
        assert run["status"] == "passed", failing(run)
        assert verification(run)["mode"] == "incremental"
        assert run["report"]["seal"] is not None
    # Only the latest seal keeps its totals; every seal's census keeps their digest.
    kept = await scalar(app, "SELECT count(totals_accounts) FROM ledger_seals")
    assert kept == 1
    await tamper(
        app,
        "UPDATE accounts SET earned_total = earned_total + 2, spent_total = spent_total + 2 "
        "WHERE id = :a",
        a=db_id(app, a.account_id),
    )
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    found = failing(run)
    assert set(found) == {"cached_totals"}
    [wrong] = found["cached_totals"]
    assert wrong["rows"] == {"account_id": a.account_id}
    assert wrong["found"]["earned_total"] == wrong["expected"]["earned_total"] + 2
    full = await reconcile(client, books.platform, full=True)
    assert failing(full)["cached_totals"] == found["cached_totals"]


@postgres_only
async def test_altered_account_totals_of_a_seal_are_tampering(
    client: AsyncClient, app: FastAPI
) -> None:
    """The totals are not in the chained digest themselves, their digest is (in the census):
    edited totals are reported, and the run verifies in full rather than trust them."""
    books = await sealed(client, app)
    a = books.members[0]
    await tamper(
        app,
        "UPDATE ledger_seals SET totals_balances[array_position(totals_accounts, :a)] = "
        "totals_balances[array_position(totals_accounts, :a)] + 1 "
        "WHERE totals_accounts IS NOT NULL",
        a=db_id(app, a.account_id),
    )
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    assert verification(run)["mode"] == "full"
    [report] = run["report"]["tampering"]
    assert "account totals" in report["message"]
    assert run["report"]["seal"] is None


async def _latest_totals(app: FastAPI) -> tuple[Any, dict[str, Any], str]:
    """The seal that keeps account totals (the latest), its census, and the digest of the
    totals as stored."""
    async with app.state.engine.connect() as connection:
        seal_id, census = (
            await connection.execute(
                text(
                    "SELECT id, CAST(census AS text) FROM ledger_seals "
                    "WHERE totals_accounts IS NOT NULL"
                )
            )
        ).one()
        digest = await connection.scalar(seals.TOTALS_DIGEST, {"id": seal_id})
    return seal_id, json.loads(census), digest


@postgres_only
async def test_a_seal_is_inserted_with_its_account_totals(
    client: AsyncClient, app: FastAPI
) -> None:
    """The seal's INSERT stores its account totals, cast from the text they came as: the
    stored arrays have the digest in its census, and sum what the entries it counts as old
    sum; the next run takes them, and an edited cached balance is named from them."""
    books = await sealed(client, app)
    seal_id, census, digest = await _latest_totals(app)
    async with app.state.engine.connect() as connection:
        accounts, entries, balance = (
            await connection.execute(
                text(
                    "SELECT cardinality(totals_accounts), "
                    "(SELECT sum(n) FROM unnest(totals_entries) AS n), "
                    "(SELECT sum(b) FROM unnest(totals_balances) AS b) "
                    "FROM ledger_seals WHERE id = :id"
                ),
                {"id": seal_id},
            )
        ).one()
    assert digest == census["totals_digest"]
    assert census["entries"]["fresh"] == []
    assert entries == await scalar(app, "SELECT count(*) FROM entries")
    assert accounts == await scalar(app, "SELECT count(DISTINCT account_id) FROM entries")
    assert balance == 0
    a, b = books.members[0], books.members[1]
    await post(client, books.id, books.admin, [(a.account_id, 2), (b.account_id, -2)])
    await tamper(
        app,
        "UPDATE accounts SET balance = balance + 1, earned_total = earned_total + 1 WHERE id = :a",
        a=db_id(app, b.account_id),
    )
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    assert [f["rows"] for f in failing(run)["cached_totals"]] == [{"account_id": b.account_id}]


@postgres_only
async def test_a_seal_copies_the_account_ids_of_the_last_when_they_are_the_same(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incremental sealing run whose totals name the same accounts, in the same order, as
    the last seal's has its INSERT copy the ids from the last seal's row instead of sending
    them; when an account has its first entries since, they are sent. Either way the stored
    totals have the digest in the seal's census and cover every account with entries, and
    the next run takes them and passes."""
    books = await sealed(client, app)
    made: list[seals.AccountTotals] = []
    store_with = seals.AccountTotals.store_with

    def spy(totals: seals.AccountTotals, seal: Any) -> None:
        made.append(totals)
        store_with(totals, seal)

    monkeypatch.setattr(seals.AccountTotals, "store_with", spy)

    async def stored() -> tuple[str, str, int]:
        seal_id, census, digest = await _latest_totals(app)
        accounts = await scalar(
            app,
            "SELECT cardinality(totals_accounts) FROM ledger_seals WHERE id = :id",
            id=seal_id,
        )
        return digest, census["totals_digest"], accounts

    await seal_a_posting(client, books, 3)
    digest, in_census, accounts = await stored()
    assert digest == in_census
    assert accounts == await scalar(app, "SELECT count(DISTINCT account_id) FROM entries")
    newcomer = await books.api.member(books.id, books.admin)
    a = books.members[0]
    await post(client, books.id, books.admin, [(newcomer.account_id, 4), (a.account_id, -4)])
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", failing(run)
    assert verification(run)["mode"] == "incremental"
    digest, in_census, more = await stored()
    assert digest == in_census
    assert more == accounts + 1
    assert [totals.accounts is None for totals in made] == [True, False]
    await seal_a_posting(client, books, 2)


def test_account_totals_without_their_accounts_name_the_seal_to_copy_them_from() -> None:
    """Totals that leave their account ids out (TOTALS_COLUMNS_AFTER_SEAL) are taken only
    with the seal whose ids they are."""
    row = SimpleNamespace(
        totals_accounts=None,
        totals_entries="{1}",
        totals_balances="{0}",
        totals_earned="{0}",
        digest="d",
    )
    last = uuid.uuid4()
    assert seals.AccountTotals.of(row, last).same_accounts_as == last
    with pytest.raises(ValueError, match="without their accounts"):
        seals.AccountTotals.of(row)


@postgres_only
async def test_a_plan_that_fails_after_sending_the_account_pass_stops_it(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the plan fail once its account pass is on its way, the statement is stopped:
    the run reports the plan's error (not a connection still busy), and the next run
    passes."""
    books = await sealed(client, app)
    a, b = books.members[0], books.members[1]
    await post(client, books.id, books.admin, [(a.account_id, 2), (b.account_id, -2)])

    def fails(seed: Any) -> Any:
        raise RuntimeError("the tally failed")

    monkeypatch.setattr(seals._Tally, "of", staticmethod(fails))
    started = expect(
        await client.post("/v1/admin/reconciliations", json={}, headers=books.platform.headers),
        202,
    )
    run = expect(
        await client.get(
            f"/v1/admin/reconciliations/{started['id']}", headers=books.platform.headers
        ),
        200,
    )
    assert run["status"] == "error"
    assert "the tally failed" in run["report"]["error"]
    monkeypatch.undo()
    again = await reconcile(client, books.platform)
    assert again["status"] == "passed", failing(again)
    assert verification(again)["mode"] == "incremental"


@postgres_only
async def test_a_seal_without_its_account_totals_sums_every_entry_once(
    client: AsyncClient, app: FastAPI
) -> None:
    """A seal whose totals are gone (made before they were arrays, or cleared behind the
    service): the next run sums every entry for the figures, raises no alarm, and leaves
    totals in its own seal, which the run after that uses; an edited cached balance is named
    either way."""
    books = await sealed(client, app)
    a, b = books.members[0], books.members[1]
    await tamper(
        app,
        "UPDATE ledger_seals SET totals_accounts = NULL, totals_entries = NULL, "
        "totals_balances = NULL, totals_earned = NULL",
    )
    await post(client, books.id, books.admin, [(a.account_id, 4), (b.account_id, -4)])
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", failing(run)
    assert verification(run)["mode"] == "incremental"
    assert await scalar(app, "SELECT count(totals_accounts) FROM ledger_seals") == 1
    await tamper(
        app,
        "UPDATE accounts SET balance = balance + 1, earned_total = earned_total + 1 WHERE id = :a",
        a=db_id(app, a.account_id),
    )
    found = failing(await reconcile(client, books.platform))
    assert [f["rows"] for f in found["cached_totals"]] == [{"account_id": a.account_id}]
    await tamper(
        app,
        "UPDATE ledger_seals SET totals_accounts = NULL, totals_entries = NULL, "
        "totals_balances = NULL, totals_earned = NULL",
    )
    assert (
        failing(await reconcile(client, books.platform))["cached_totals"]
        == (found["cached_totals"])
    )


def _findings(run: dict[str, Any]) -> dict[str, list[Any]]:
    return {name: sorted(map(str, found)) for name, found in failing(run).items()}


@postgres_only
@pytest.mark.parametrize(
    "statements",
    [
        # Status and transaction disagree, both ways.
        (
            "UPDATE exchanges SET status = 'confirmed' WHERE id = :proposed",
            "UPDATE exchanges SET status = 'proposed' WHERE id = :posted",
        ),
        # The exchange lets go of its (sealed, unchanged) transaction: nobody claims it now.
        ("UPDATE exchanges SET status = 'cancelled', transaction_id = NULL WHERE id = :posted",),
        # Resolved by a reversal that does not reverse it.
        (
            "UPDATE exchanges SET status = 'resolved', resolution = 'reversed', "
            "reversal_transaction_id = :other WHERE id = :posted",
        ),
        # Resolved by a "reversal" that is no reversal at all: its own transaction.
        (
            "UPDATE exchanges SET status = 'resolved', resolution = 'reversed', "
            "reversal_transaction_id = transaction_id WHERE id = :posted",
        ),
        # A sealed exchange deleted: its transaction is claimed by nobody now.
        (
            "DELETE FROM exchange_parties WHERE exchange_id = :posted",
            "DELETE FROM exchanges WHERE id = :posted",
        ),
        # An exchange added behind the service, confirmed without a transaction.
        (
            "INSERT INTO exchanges SELECT (jsonb_populate_record(NULL::exchanges, to_jsonb(e) "
            "|| jsonb_build_object('id', gen_random_uuid(), 'transaction_id', NULL))).* "
            "FROM exchanges e WHERE id = :posted",
        ),
    ],
)
async def test_exchanges_are_checked_incrementally_as_in_full(
    client: AsyncClient, app: FastAPI, statements: tuple[str, ...]
) -> None:
    """Exchanges change legitimately, so an incremental run checks every one written since
    the last seal (through the primary key of transactions; the others the sealing run
    checked, and they are unchanged) and counts the claimed exchange transactions against the
    census scan's count, rather than looking through every transaction: the findings are
    those of a full run."""
    books = await sealed(client, app)
    a, b = books.members[0], books.members[1]
    # A legitimate exchange after the seal raises nothing.
    await record_exchange(client, books.id, books.admin, b, a, 25)
    clean = await reconcile(client, books.platform)
    assert clean["status"] == "passed", failing(clean)
    assert verification(clean)["mode"] == "incremental"
    await tamper(
        app,
        *statements,
        proposed=db_id(app, books.proposed["id"]),
        posted=db_id(app, books.exchange["id"]),
        other=db_id(app, books.reversal_id),
    )
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    assert set(failing(run)) == {"exchanges_posted_once"}
    full = await reconcile(client, books.platform, full=True)
    assert _findings(run) == _findings(full)


@postgres_only
@pytest.mark.parametrize("census_counts_exchanges", [True, False])
async def test_an_exchange_transaction_nobody_claims_is_named_incrementally(
    client: AsyncClient, app: FastAPI, census_counts_exchanges: bool
) -> None:
    """The exchange transactions are counted as the last census's old ones plus the fresh
    ones: legitimate exchanges across sealing runs keep the count right (no alarm), and one
    written behind the service that no exchange claims is named as a full run names it; a
    census from before it kept that count has the run look through every transaction."""
    books = await sealed(client, app)
    a, b = books.members[0], books.members[1]
    for minutes in (25, 30):
        await record_exchange(client, books.id, books.admin, b, a, minutes)
        run = await reconcile(client, books.platform)
        assert run["status"] == "passed", failing(run)
        assert run["report"]["seal"] is not None
    census = await scalar(app, "SELECT census FROM ledger_seals ORDER BY high_water DESC LIMIT 1")
    assert census["transactions"]["exchanges"] == 3  # the scenario's, and the two since
    if not census_counts_exchanges:
        seal = await scalar(app, "SELECT id FROM ledger_seals ORDER BY high_water DESC LIMIT 1")
        previous = await scalar(
            app,
            "SELECT chained_digest FROM ledger_seals ORDER BY high_water DESC OFFSET 1 LIMIT 1",
        )
        del census["transactions"]["exchanges"]
        row = await _seal_row(app, seal)
        await tamper(
            app,
            "UPDATE ledger_seals SET census = CAST(:census AS jsonb), chained_digest = :chained "
            "WHERE id = :id",
            census=seals.canonical_census(census).decode(),
            chained=seals.chain(previous, row["digest"], row["high_water"], census),
            id=seal,
        )
        clean = await reconcile(client, books.platform)
        assert clean["status"] == "passed", failing(clean)
        # The census scan counts them then, and the next seal's census has the number again.
        await post(client, books.id, books.admin, [(a.account_id, 2), (b.account_id, -2)])
        sealing = await reconcile(client, books.platform)
        assert sealing["report"]["seal"] is not None
        latest = "SELECT census FROM ledger_seals ORDER BY high_water DESC LIMIT 1"
        assert (await scalar(app, latest))["transactions"]["exchanges"] == 3
    unclaimed = await insert_transaction(
        app, books.id, "exchange", [(a.account_id, 5), (b.account_id, -5)]
    )
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    [finding] = failing(run)["exchanges_posted_once"]
    assert finding["rows"] == {"transaction_id": unclaimed}
    full = await reconcile(client, books.platform, full=True)
    assert _findings(run) == _findings(full)


def test_exchange_transactions_left_uncounted_stay_out_of_the_census() -> None:
    """Without a number of exchange transactions (not counted, and none to take from the
    last census) the next census has none either, rather than a wrong one."""
    window = seals.Window.fresh_from(1000)
    seed = seals.CensusSeed(counts=None, entries=[], transactions=[], window_now=window)
    assert seed.old_exchange_transactions is None
    seed.exchange_transactions = 4
    fields = {"id": 1, "kind": "exchange", "fresh": True, "fresh_now": True}
    seed.transactions = [tuple(fields.get(column) for column in seals.TRANSACTION_COLUMNS)]
    assert seed.old_exchange_transactions == 3


@postgres_only
async def test_fresh_transactions_without_entries_or_without_a_row_are_named_incrementally(
    client: AsyncClient, app: FastAPI
) -> None:
    """The fresh transactions are looked at one by one (through the primary key and the
    transaction_id index): a new transaction row without entries, and new entries naming a
    transaction that does not exist, are found as a full run finds them."""
    books = await sealed(client, app)
    a, b = books.members[0], books.members[1]
    empty = await insert_transaction(app, books.id, "transfer", [])
    orphaned = await insert_transaction(
        app, books.id, "transfer", [(a.account_id, 6), (b.account_id, -6)]
    )
    await tamper(app, "DELETE FROM transactions WHERE id = :id", id=db_id(app, orphaned))
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    found = failing(run)
    assert {f["rows"]["transaction_id"] for f in found["transactions_balance"]} == {
        empty,
        orphaned,
    }
    full = await reconcile(client, books.platform, full=True)
    assert _findings(run)["transactions_balance"] == _findings(full)["transactions_balance"]


@postgres_only
async def test_a_fresh_entry_taking_an_old_version_breaks_the_chain_from_the_totals(
    client: AsyncClient, app: FastAPI
) -> None:
    """Chain tails are checked from the last seal's account totals (the old entries are
    versions 1..n ending at the total): a fresh entry that claims an old version, or an old
    balance, is out of place there as in the full check."""
    books = await sealed(client, app)
    a = books.members[0]
    # Legitimate postings continue the chains: nothing to report.
    await seal_a_posting(client, books, 4)
    found = await _a_forged_chain_break(
        client,
        app,
        books,
        "ALTER TABLE entries DROP CONSTRAINT uq_entries_account_id_account_version",
        "UPDATE entries SET account_version = 1 WHERE transaction_id = :id AND account_id = :a",
    )
    assert {f["rows"]["account_id"] for f in found["balance_after_chain"]} == {a.account_id}
    full = await reconcile(client, books.platform, full=True)
    assert {f["rows"]["account_id"] for f in failing(full)["balance_after_chain"]} == {a.account_id}


@postgres_only
async def test_new_transactions_are_checked_from_the_rows_the_plan_read(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new fresh transactions are checked from the rows the plan already read (no second
    look-up): an edited memo or amount, a lone line and an entry added behind the service
    are named as a full run names them, and legitimate shapes (three lines, lines given out of
    account order) raise nothing."""
    from app.reconciliation import checks

    read: list[set[Any]] = []
    python_pass = checks._transactions_read

    def spy(fresh: seals.Fresh) -> list[Any]:
        read.append({str(t) for t in fresh.transactions_read})
        return python_pass(fresh)

    monkeypatch.setattr(checks, "_transactions_read", spy)
    books = await sealed(client, app)
    a, b, c = books.members[0], books.members[1], books.members[2]
    three = await post(
        client, books.id, books.admin, [(c.account_id, 4), (a.account_id, -1), (b.account_id, -3)]
    )
    out_of_order = await insert_transaction(
        app, books.id, "transfer", [(c.account_id, 2), (b.account_id, 1), (a.account_id, -3)]
    )
    single = await insert_transaction(app, books.id, "transfer", [(a.account_id, 1)])
    memo = await post(client, books.id, books.admin, [(a.account_id, 2), (b.account_id, -2)])
    amount = await post(client, books.id, books.admin, [(a.account_id, 3), (b.account_id, -3)])
    added = await post(client, books.id, books.admin, [(a.account_id, 7), (b.account_id, -7)])
    edits = (
        "UPDATE transactions SET memo = 'edited' WHERE id = :memo",
        "UPDATE entries SET amount = amount + 1 WHERE id = (SELECT min(id) FROM entries "
        "WHERE transaction_id = :amount)",
        "INSERT INTO entries (transaction_id, account_id, amount, balance_after, account_version, "
        "posted_at) SELECT transaction_id, account_id, 1, balance_after + 1, "
        "account_version + 1000, posted_at "
        "FROM entries WHERE transaction_id = :added ORDER BY id LIMIT 1",
    )
    await tamper(
        app,
        *edits,
        memo=db_id(app, memo["id"]),
        amount=db_id(app, amount["id"]),
        added=db_id(app, added["id"]),
    )
    run = await reconcile(client, books.platform)
    assert verification(run)["mode"] == "incremental"
    new = {three["id"], out_of_order, memo["id"], amount["id"], single, added["id"]}
    assert read
    assert new <= read[-1]
    found = failing(run)
    assert {f["rows"]["transaction_id"] for f in found["transactions_balance"]} == {
        amount["id"],
        single,
        added["id"],
    }
    assert {f["rows"]["transaction_id"] for f in found["content_hashes"]} == {
        memo["id"],
        amount["id"],
        added["id"],
    }
    full = await reconcile(client, books.platform, full=True)
    for check in ("transactions_balance", "content_hashes"):
        assert _findings(run)[check] == _findings(full)[check]


@postgres_only
async def test_an_incremental_run_seals_its_new_span_from_the_rows_its_plan_read(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incremental sealing run digests its new span from the rows its plan read; a full
    run verifies that seal. Should the counts call for another plan, that span is dropped
    and the database digests the span again."""
    books = await sealed(client, app)
    from_rows: list[Any] = []
    in_sql: list[tuple[int, int]] = []
    span_from_rows, digest_span, confirm_plan = (
        seals.span_from_rows,
        seals.digest_span,
        seals.confirm_plan,
    )

    def spy_rows(*args: Any) -> Any:
        from_rows.append(span_from_rows(*args))
        return from_rows[-1]

    async def spy_sql(session: AsyncSession, low: int, high: int) -> Any:
        in_sql.append((low, high))
        return await digest_span(session, low, high)

    monkeypatch.setattr(seals, "span_from_rows", spy_rows)
    monkeypatch.setattr(seals, "digest_span", spy_sql)
    await seal_a_posting(client, books, 25)
    assert len(from_rows) == 1
    assert from_rows[0] is not None
    assert in_sql == []
    full = await reconcile(client, books.platform, full=True)
    assert full["status"] == "passed", failing(full)

    async def replaced(session: AsyncSession, plan: seals.Plan) -> seals.Plan:
        assert plan.fresh is not None
        assert plan.fresh.counted is not None
        await plan.fresh.counted.counts()
        await confirm_plan(session, plan)
        return seals.Plan("full", "The counts call for another plan (in this test).")

    monkeypatch.setattr(seals, "confirm_plan", replaced)
    a, b = books.members[0], books.members[1]
    await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", failing(run)
    seal = run["report"]["seal"]
    assert len(from_rows) == 2
    assert from_rows[1] is not None
    assert (seal["previous_high_water"], seal["high_water"]) in in_sql
    monkeypatch.setattr(seals, "confirm_plan", confirm_plan)
    full = await reconcile(client, books.platform, full=True)
    assert full["status"] == "passed", failing(full)


def test_the_plans_tally_is_what_a_pass_per_question_finds() -> None:
    """_Glance, then _Tally, gather in one pass each what _decide asked of the rows one
    question at a time. The glance what the census's counts and the account pass need: how
    many rows are fresh to the last census, those of them it listed, the entries at or below
    its mark, the accounts of listed entries, the entries fresh to this run. The tally the
    rest: the rows fresh to the last census apart from those fresh to this run alone, each
    account's lowest fresh version, the ids found on two fresh rows (which have no kind of
    their own), the exchanges and the originals named."""
    a, b = uuid.uuid4(), uuid.uuid4()
    t1, t2, t3, t4, original = (uuid.uuid4() for _ in range(5))

    def entry(i: int, t: uuid.UUID, account: uuid.UUID, version: int, **flags: bool) -> Any:
        fields = {"id": i, "transaction_id": t, "account_id": account, "account_version": version}
        fields |= {"fresh": True, "fresh_now": False} | flags
        return tuple(fields.get(column) for column in seals.ENTRY_COLUMNS)

    def row(t: uuid.UUID, kind: str, reverses: uuid.UUID | None = None, **flags: bool) -> Any:
        fields = {"id": t, "kind": kind, "reverses_id": reverses}
        fields |= {"fresh": True, "fresh_now": False} | flags
        return tuple(fields.get(column) for column in seals.TRANSACTION_COLUMNS)

    entries = [
        entry(11, t1, a, 7),
        entry(12, t1, b, 3, fresh_now=True),
        entry(13, t2, a, 5),
        entry(14, t4, b, 9, fresh=False, fresh_now=True),
    ]
    transactions = [
        row(t1, "exchange"),
        row(t2, "reversal", original),
        row(t3, "exchange"),
        row(t3, "exchange"),
        row(t4, "exchange", fresh=False, fresh_now=True),
    ]
    seed = seals.CensusSeed(
        counts=None,
        entries=entries,
        transactions=transactions,
        window_now=seals.Window.fresh_from(1),
    )
    glance = seals._Glance.of(seed, {12, 99}, {t2, uuid.uuid4()}, 12)
    assert (glance.entries, glance.transactions) == (3, 4)
    assert glance.listed_entries_found == {12}
    assert glance.listed_transactions_found == {t2}
    assert glance.entries_below == [11, 12]
    assert glance.irregular_accounts == {b}
    assert glance.entry_ids_now == [12, 14]
    tally = seals._Tally.of(seed)
    assert tally.entries == entries[:3]
    assert tally.transactions == transactions[:4]
    assert tally.entry_ids == {11, 12, 13}
    assert tally.entries_transaction_ids == {t1, t2}
    assert tally.chain_starts == {a: 5, b: 3}
    assert set(tally.transaction_rows) == {t1, t2, t3}
    assert tally.doubled == {t3}
    assert tally.exchanges == 3
    assert tally.reversed_ids == {original}
    assert tally.sole_rows_kinds(None) == {}
    assert tally.sole_rows_kinds({t2}) == {t1: "exchange"}
    assert tally.sole_rows_kinds(set()) == {t1: "exchange", t2: "reversal"}

"""Each check passes on clean books and fails on books corrupted behind the service, naming the
corrupted rows. Every test starts from a clean, sealed run of the same small scenario."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from app.reconciliation import seals
from tests.factories import expect
from tests.reconciliation.helpers import (
    Scenario,
    db_id,
    failing,
    insert_transaction,
    reconcile,
    scalar,
    scenario,
    tamper,
)

pytestmark = pytest.mark.anyio


async def clean(client: AsyncClient, app: FastAPI) -> Scenario:
    books = await scenario(client, app)
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", failing(run)
    assert run["report"]["seal"] is not None
    return books


async def entry_id(app: FastAPI, transaction_id: str, account_id: str) -> int:
    found = await scalar(
        app,
        "SELECT id FROM entries WHERE transaction_id = :t AND account_id = :a",
        t=db_id(app, transaction_id),
        a=db_id(app, account_id),
    )
    assert found is not None
    return int(found)


def rows(findings: list[dict[str, Any]], key: str) -> set[Any]:
    return {f["rows"].get(key) for f in findings}


async def test_a_deleted_entry_breaks_balance_chain_totals_and_seal(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await clean(client, app)
    a = books.members[0]
    gone = await entry_id(app, books.transfers[0], a.account_id)
    await tamper(app, "DELETE FROM entries WHERE id = :id", id=gone)

    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    found = failing(run)
    assert set(found) == {
        "transactions_balance",
        "balances_sum_to_zero",
        "cached_totals",
        "balance_after_chain",
        "content_hashes",
    }
    unbalanced = found["transactions_balance"][0]
    assert unbalanced["rows"] == {"transaction_id": books.transfers[0]}
    assert unbalanced["found"] == {"entries": 1, "sum": -45, "zero_entries": 0}
    assert rows(found["cached_totals"], "account_id") == {a.account_id}
    assert rows(found["balance_after_chain"], "account_id") == {a.account_id}
    assert rows(found["content_hashes"], "transaction_id") == {books.transfers[0]}
    [broken] = run["report"]["tampering"]
    assert broken["first_bad_block"] == 0
    assert broken["expected"]["entry_count"] == broken["found"]["entry_count"] + 1
    assert run["report"]["seal"] is None


async def test_tampering_is_located_to_its_block(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seals, "BLOCK_SIZE", 4)
    books = await clean(client, app)
    seal = expect(
        await client.get("/v1/admin/reconciliations?limit=1", headers=books.platform.headers), 200
    )["items"][0]["report"]["seal"]
    assert seal["entries"] == 16
    await tamper(app, "UPDATE entries SET amount = amount + 1 WHERE id = 10")
    victim = await scalar(app, "SELECT transaction_id FROM entries WHERE id = 10")

    run = await reconcile(client, books.platform)
    [report] = run["report"]["tampering"]
    assert report["first_bad_block"] == 2  # entries 9..12
    assert report["entries_from"] == 9
    assert report["seal_id"] == run["report"]["tampering"][0]["seal_id"]
    hashes = failing(run)["content_hashes"]
    assert rows(hashes, "transaction_id") == {str(uuid.UUID(str(victim)))}


async def test_an_unbalanced_transaction_is_named(client: AsyncClient, app: FastAPI) -> None:
    books = await clean(client, app)
    a, b = books.members[0], books.members[1]
    bad = await insert_transaction(
        app, books.id, "adjustment", [(a.account_id, 10), (b.account_id, -5)]
    )
    empty = uuid.uuid4()
    await tamper(
        app,
        "INSERT INTO transactions (id, community_id, kind, memo, occurred_on, details, posted_at, "
        "content_hash) VALUES (:id, :cid, 'transfer', '', '2026-01-01', '{}', "
        "'2026-01-01 00:00:00', :hash)",
        id=db_id(app, empty),
        cid=db_id(app, books.id),
        hash="0" * 64,
    )

    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"transactions_balance", "balances_sum_to_zero", "content_hashes"}
    assert rows(found["transactions_balance"], "transaction_id") == {bad, str(empty)}
    assert found["balances_sum_to_zero"][0]["found"] == 5
    # The empty transaction's hash cannot be recomputed from entries it does not have.
    assert rows(found["content_hashes"], "transaction_id") == {str(empty)}
    assert run["report"]["tampering"] == []  # new rows, above the sealed mark
    assert run["report"]["seal"] is None


async def test_entries_whose_transaction_is_gone_are_named(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await clean(client, app)
    gone = books.transfers[2]
    await tamper(app, "DELETE FROM transactions WHERE id = :id", id=db_id(app, gone))

    run = await reconcile(client, books.platform)
    found = failing(run)
    # The idempotency record of the posting names it too.
    assert set(found) == {"transactions_balance", "idempotency_records"}
    [finding] = found["transactions_balance"]
    assert finding["rows"] == {"transaction_id": gone}
    assert finding["found"] == {"entries": 2}
    assert "does not exist" in finding["message"]
    # The sealed entries no longer join to their transaction: their block changed.
    assert run["report"]["tampering"][0]["first_bad_block"] == 0


async def test_a_broken_balance_after_chain_is_named(client: AsyncClient, app: FastAPI) -> None:
    books = await clean(client, app)
    a = books.members[0]
    second = await entry_id(app, books.transfers[2], a.account_id)
    await tamper(
        app, "UPDATE entries SET balance_after = balance_after + 7 WHERE id = :id", id=second
    )

    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"balance_after_chain"}
    chain = found["balance_after_chain"]
    assert chain[0]["rows"] == {"entry_id": second, "account_id": a.account_id}
    assert chain[0]["found"]["balance_after"] == chain[0]["expected"]["balance_after"] + 7
    # The entry after it now follows a wrong predecessor: named too.
    assert len(chain) == 2
    assert run["report"]["tampering"][0]["first_bad_block"] == 0


async def test_a_balance_moved_further_out_of_range_is_named(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await clean(client, app)
    a, b = books.members[0], books.members[1]
    b_balance = await scalar(
        app, "SELECT balance FROM accounts WHERE id = :id", id=db_id(app, b.account_id)
    )
    assert b_balance < 0
    # Tightening a limit later leaves b outside it: allowed, not a finding.
    expect(
        await client.patch(
            f"/v1/accounts/{b.account_id}",
            json={"min_balance": 0, "reason": "stricter"},
            headers=books.admin.headers,
        ),
        200,
    )
    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", failing(run)

    # A posting behind the service that moves b further away is one.
    moved = await insert_transaction(
        app, books.id, "transfer", [(a.account_id, 10), (b.account_id, -10)]
    )
    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"limits"}
    [limit] = found["limits"]
    assert limit["rows"]["account_id"] == b.account_id
    assert limit["found"] == {"balance": b_balance - 10}
    assert limit["expected"]["min_balance"] == 0
    entry = await entry_id(app, moved, b.account_id)
    assert limit["rows"]["entry_id"] == entry

    # Renaming the community (a day later, say) changes nothing about its limits: the finding
    # stays. Only a change of the default limits would forgive it.
    expect(
        await client.patch(
            f"/v1/communities/{books.id}", json={"name": "Renamed"}, headers=books.admin.headers
        ),
        200,
    )
    await tamper(
        app,
        "UPDATE communities SET updated_at = '2999-01-01 00:00:00' WHERE id = :id",
        id=db_id(app, books.id),
    )
    run = await reconcile(client, books.platform)
    assert set(failing(run)) == {"limits"}


async def test_reversals_that_do_not_mirror_point_nowhere_or_reverse_a_reversal(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await clean(client, app)
    a, b, c = books.members
    # transfers[0] was a +45, b -45; this "reversal" gives back only 40.
    short = await insert_transaction(
        app,
        books.id,
        "reversal",
        [(a.account_id, -40), (b.account_id, 40)],
        reverses_id=books.transfers[0],
    )
    nowhere_original = str(uuid.uuid4())
    nowhere = await insert_transaction(
        app,
        books.id,
        "reversal",
        [(a.account_id, -5), (c.account_id, 5)],
        reverses_id=nowhere_original,
    )
    # The reversal of transfers[1] (b +30, c -30) was b -30, c +30; reversing it again:
    again = await insert_transaction(
        app,
        books.id,
        "reversal",
        [(b.account_id, 30), (c.account_id, -30)],
        reverses_id=books.reversal_id,
    )

    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"reversals"}
    messages = {f["message"] for f in found["reversals"]}
    by_transaction: dict[str, list[dict[str, Any]]] = {}
    for finding in found["reversals"]:
        by_transaction.setdefault(finding["rows"]["transaction_id"], []).append(finding)
    assert set(by_transaction) == {short, nowhere, again}
    assert {(f["expected"], f["found"]) for f in by_transaction[short]} == {(-45, -40), (45, 40)}
    assert any(nowhere_original in m and "missing" in m for m in messages)
    assert any(
        f["rows"].get("original_id") == books.reversal_id and f["found"] == "reversal"
        for f in by_transaction[again]
    )


async def test_a_reversal_missing_lines_of_its_original_is_named(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await clean(client, app)
    a, b, c = books.members
    fund = books.community["fund_account_id"]
    original = await insert_transaction(
        app,
        books.id,
        "transfer",
        [(a.account_id, 10), (b.account_id, -10), (c.account_id, 5), (fund, -5)],
    )
    run = await reconcile(client, books.platform)
    assert set(failing(run)) == {"fund_history"}  # a transfer out of the fund
    partial = await insert_transaction(
        app,
        books.id,
        "reversal",
        [(a.account_id, -10), (b.account_id, 10)],
        reverses_id=original,
    )
    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"reversals", "fund_history"}
    assert rows(found["reversals"], "transaction_id") == {partial}
    assert rows(found["reversals"], "account_id") == {c.account_id, fund}


async def test_exchange_status_and_transaction_disagree(client: AsyncClient, app: FastAPI) -> None:
    books = await clean(client, app)
    posted, proposed = books.exchange, books.proposed
    await tamper(
        app,
        "UPDATE exchanges SET status = 'confirmed' WHERE id = :proposed",
        "UPDATE exchanges SET status = 'proposed' WHERE id = :posted",
        proposed=db_id(app, proposed["id"]),
        posted=db_id(app, posted["id"]),
    )

    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"exchanges_posted_once"}
    by_exchange = {f["rows"]["exchange_id"]: f for f in found["exchanges_posted_once"]}
    assert set(by_exchange) == {posted["id"], proposed["id"]}
    assert by_exchange[proposed["id"]]["expected"] == "one exchange transaction"
    assert by_exchange[proposed["id"]]["rows"]["transaction_id"] is None
    assert by_exchange[posted["id"]]["expected"] == "no transaction"
    assert by_exchange[posted["id"]]["rows"]["transaction_id"] == posted["transaction_id"]


async def test_an_exchange_transaction_no_exchange_claims_is_named(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await clean(client, app)
    a, b = books.members[0], books.members[1]
    stray = await insert_transaction(
        app, books.id, "exchange", [(a.account_id, 10), (b.account_id, -10)]
    )
    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"exchanges_posted_once"}
    [finding] = found["exchanges_posted_once"]
    assert finding["rows"] == {"transaction_id": stray}
    assert finding["found"] == 0


async def test_an_idempotency_record_naming_a_missing_transaction(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await clean(client, app)
    record = await scalar(
        app, "SELECT min(id) FROM idempotency_records WHERE transaction_id IS NOT NULL"
    )
    assert record is not None
    missing = uuid.uuid4()
    await tamper(
        app,
        "UPDATE idempotency_records SET transaction_id = :missing WHERE id = :id",
        missing=db_id(app, missing),
        id=record,
    )
    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"idempotency_records"}
    [finding] = found["idempotency_records"]
    assert finding["rows"] == {"idempotency_record_id": record, "transaction_id": str(missing)}


async def test_a_fund_entry_that_is_no_donation_grant_or_remainder(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await clean(client, app)
    a = books.members[0]
    fund = books.community["fund_account_id"]
    inflow = await insert_transaction(app, books.id, "transfer", [(fund, 10), (a.account_id, -10)])
    # A "donation" that takes hours out of the fund is wrong too.
    backwards = await insert_transaction(app, books.id, "donation", [(fund, -5), (a.account_id, 5)])
    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"fund_history"}
    assert rows(found["fund_history"], "transaction_id") == {inflow, backwards}
    assert {f["found"]["minutes"] for f in found["fund_history"]} == {10, -5}


async def test_a_memo_edited_behind_the_service(client: AsyncClient, app: FastAPI) -> None:
    books = await clean(client, app)
    await tamper(
        app,
        "UPDATE transactions SET memo = 'nothing to see' WHERE id = :id",
        id=db_id(app, books.transfers[3]),
    )
    run = await reconcile(client, books.platform)
    found = failing(run)
    assert set(found) == {"content_hashes"}
    [finding] = found["content_hashes"]
    assert finding["rows"] == {"transaction_id": books.transfers[3]}
    assert "edited behind the service" in finding["message"]


async def test_an_altered_seal_row_breaks_the_chained_digest(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await clean(client, app)
    a, b = books.members[0], books.members[1]
    await insert_transaction(app, books.id, "transfer", [(a.account_id, 5), (b.account_id, -5)])
    second = await reconcile(client, books.platform)
    assert second["status"] == "passed"
    first_seal = await scalar(app, "SELECT id FROM ledger_seals WHERE previous_high_water = 0")
    await tamper(
        app,
        "UPDATE ledger_seals SET chained_digest = :forged WHERE id = :id",
        forged="f" * 64,
        id=first_seal,
    )
    run = await reconcile(client, books.platform)
    assert run["status"] == "failed"
    assert failing(run) == {}
    reports = run["report"]["tampering"]
    assert len(reports) >= 1
    assert reports[0]["seal_id"] == str(uuid.UUID(str(first_seal)))
    assert reports[0]["found"] == {"chained_digest": "f" * 64}
    assert "seal record itself was altered" in reports[0]["message"]
    assert run["report"]["seal"] is None

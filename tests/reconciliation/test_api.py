"""Who may run reconciliations and see them; scoped runs; runs that do not seal; the text
report; the list; repairing cached balances."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import delete

from app.models import ReconciliationRun
from app.reconciliation.service import create_run, repair_balances
from tests.factories import Api, expect, problem
from tests.ledger.helpers import partner_headers, post
from tests.reconciliation.helpers import (
    db_id,
    failing,
    reconcile,
    scalar,
    scenario,
    tamper,
)

pytestmark = pytest.mark.anyio

RUNS = "/v1/admin/reconciliations"


async def seal_count(app: FastAPI) -> int:
    return int(await scalar(app, "SELECT count(*) FROM ledger_seals"))


async def test_a_community_run_reports_only_its_rows_and_never_seals(
    client: AsyncClient, app: FastAPI
) -> None:
    mine = await scenario(client, app)
    other = await scenario(client, app)
    broken = other.members[1].account_id
    record = await scalar(
        app,
        "SELECT min(r.id) FROM idempotency_records r JOIN transactions t "
        "ON t.id = r.transaction_id WHERE t.community_id = :cid",
        cid=db_id(app, other.id),
    )
    await tamper(
        app,
        "UPDATE accounts SET balance = balance - 3, spent_total = spent_total + 3 WHERE id = :id",
        "UPDATE idempotency_records SET transaction_id = :gone WHERE id = :record",
        id=db_id(app, broken),
        gone=db_id(app, "00000000-0000-4000-8000-000000000001"),
        record=record,
    )

    clean = await reconcile(client, mine.platform, community_id=mine.id)
    assert clean["status"] == "passed", failing(clean)
    assert clean["report"]["scope"] == {"community_id": mine.id}
    assert clean["report"]["seal"] is None
    assert "whole ledger" in clean["report"]["seal_note"]
    assert clean["seal_id"] is None

    dirty = await reconcile(client, mine.platform, community_id=other.id)
    assert dirty["status"] == "failed"
    found = failing(dirty)
    assert set(found) == {"balances_sum_to_zero", "cached_totals", "idempotency_records"}
    assert [f["rows"] for f in found["cached_totals"]] == [{"account_id": broken}]
    assert [f["rows"]["community_id"] for f in found["balances_sum_to_zero"]] == [other.id]
    assert [f["rows"]["idempotency_record_id"] for f in found["idempotency_records"]] == [record]
    assert await seal_count(app) == 0


async def test_a_run_asked_not_to_seal_does_not(client: AsyncClient, app: FastAPI) -> None:
    books = await scenario(client, app)
    run = await reconcile(client, books.platform, seal=False)
    assert run["status"] == "passed", failing(run)
    assert run["seal_requested"] is False
    assert run["report"]["seal"] is None
    assert run["report"]["seal_note"] == "Sealing was not requested."
    assert await seal_count(app) == 0
    sealed = await reconcile(client, books.platform)
    assert sealed["report"]["seal"]["high_water"] == sealed["report"]["high_water"]
    assert await seal_count(app) == 1


async def test_repair_balances_rebuilds_cached_figures_from_entries(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await scenario(client, app)
    a = books.members[0]
    before = await scalar(
        app, "SELECT balance FROM accounts WHERE id = :id", id=db_id(app, a.account_id)
    )
    await tamper(
        app,
        "UPDATE accounts SET balance = balance + 100, earned_total = earned_total + 100, "
        "version = version + 1 WHERE id = :id",
        id=db_id(app, a.account_id),
    )
    assert (await reconcile(client, books.platform))["status"] == "failed"

    async with app.state.sessionmaker() as session, session.begin():
        changes = await repair_balances(session)
    assert len(changes) == 1
    [change] = changes
    assert change["account_id"] == a.account_id
    assert change["from"]["balance"] == before + 100
    assert change["to"]["balance"] == before
    assert change["to"]["version"] == change["from"]["version"] - 1
    assert change["from"]["earned_total"] - change["to"]["earned_total"] == 100

    run = await reconcile(client, books.platform)
    assert run["status"] == "passed", failing(run)
    async with app.state.sessionmaker() as session, session.begin():
        assert await repair_balances(session) == []


async def test_who_may_reconcile(client: AsyncClient, app: FastAPI) -> None:
    books = await scenario(client, app)
    api = Api(client, app)
    other = await scenario(client, app)
    cid = books.id
    community_admin = await api.member(cid, books.admin, role="admin")
    coordinator = await api.member(cid, books.admin, role="coordinator")
    member = books.members[0]
    partner = await partner_headers(client, cid, books.admin, ["ledger:read", "ledger:write"])

    # Platform admins reconcile anything.
    whole = await reconcile(client, books.platform)
    theirs = await reconcile(client, books.platform, community_id=other.id)
    assert whole["status"] == theirs["status"] == "passed"

    # Community admins reconcile their own community only.
    own = await reconcile(client, community_admin, community_id=cid)
    assert own["status"] == "passed"
    problem(
        await client.post(RUNS, json={}, headers=community_admin.headers), 403, "admin_required"
    )
    problem(
        await client.post(RUNS, json={"community_id": other.id}, headers=community_admin.headers),
        403,
        "admin_required",
    )
    problem(
        await client.post(
            RUNS, json={"community_id": "no-such-community"}, headers=community_admin.headers
        ),
        403,
        "admin_required",
    )
    for hidden in (whole["id"], theirs["id"], "not-an-id"):
        problem(
            await client.get(f"{RUNS}/{hidden}", headers=community_admin.headers),
            404,
            "reconciliation_not_found",
        )
    listed = expect(await client.get(RUNS, headers=community_admin.headers), 200)
    assert [r["id"] for r in listed["items"]] == [own["id"]]

    # Nobody else.
    for headers in (coordinator.headers, member.headers, partner):
        problem(
            await client.post(RUNS, json={"community_id": cid}, headers=headers),
            403,
            "admin_required",
        )
        problem(await client.get(RUNS, headers=headers), 403, "admin_required")
        problem(await client.get(f"{RUNS}/{own['id']}", headers=headers), 403, "admin_required")
    problem(await client.post(RUNS, json={}), 401, "invalid_token")
    problem(await client.get(RUNS), 401, "invalid_token")


async def test_text_report_and_newest_first_pages(client: AsyncClient, app: FastAPI) -> None:
    books = await scenario(client, app)
    a, b = books.members[0], books.members[1]
    runs = [await reconcile(client, books.platform)]
    await post(client, books.id, books.admin, [(a.account_id, 5), (b.account_id, -5)])
    runs.append(await reconcile(client, books.platform))
    await tamper(
        app,
        "UPDATE accounts SET balance = balance + 1, earned_total = earned_total + 1 WHERE id = :id",
        id=db_id(app, a.account_id),
    )
    runs.append(await reconcile(client, books.platform, community_id=books.id))

    text = await client.get(
        f"{RUNS}/{runs[2]['id']}", headers={**books.platform.headers, "Accept": "text/plain"}
    )
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    report = text.text
    assert report.startswith(f"Reconciliation {runs[2]['id']}: FAILED")
    assert f"scope: {books.id}" in report
    assert "[FAIL] cached_totals" in report
    assert f"Account {a.account_id}'s cached figures differ" in report
    assert "[ok  ] transactions_balance" in report
    assert "seal: Seals cover the whole ledger" in report

    sealed = await client.get(
        f"{RUNS}/{runs[1]['id']}", headers={**books.platform.headers, "Accept": "text/plain"}
    )
    assert ": PASSED" in sealed.text
    assert f"sealed entries ({runs[0]['report']['high_water']}, " in sealed.text

    # A run not yet carried out has no report, only its progress.
    async with app.state.sessionmaker() as session, session.begin():
        queued = await create_run(session, community_id=None, seal=True, user_id=None)
        queued_id = str(queued.id)
    pending = await client.get(
        f"{RUNS}/{queued_id}", headers={**books.platform.headers, "Accept": "text/plain"}
    )
    assert pending.status_code == 200
    assert pending.text == f"Reconciliation {queued_id}: QUEUED\n  progress: 0%\n"
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(delete(ReconciliationRun).where(ReconciliationRun.id == queued.id))

    first = expect(await client.get(f"{RUNS}?limit=2", headers=books.platform.headers), 200)
    assert [r["id"] for r in first["items"]] == [runs[2]["id"], runs[1]["id"]]
    assert first["next_cursor"]
    rest = expect(
        await client.get(
            f"{RUNS}?limit=2&cursor={first['next_cursor']}", headers=books.platform.headers
        ),
        200,
    )
    assert [r["id"] for r in rest["items"]] == [runs[0]["id"]]
    assert rest["next_cursor"] is None
    problem(
        await client.get(f"{RUNS}?cursor=garbage", headers=books.platform.headers),
        422,
        "invalid_cursor",
    )

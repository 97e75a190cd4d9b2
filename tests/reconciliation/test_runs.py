from __future__ import annotations

import gc
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text

from app.reconciliation import seals, service
from app.reconciliation.checks import CHECKS
from tests.factories import Actor, Api, expect
from tests.ledger.helpers import post

pytestmark = pytest.mark.anyio


async def reconcile(client: AsyncClient, admin: Actor, **body: Any) -> dict[str, Any]:
    started = expect(
        await client.post("/v1/admin/reconciliations", json=body, headers=admin.headers), 202
    )
    run: dict[str, Any] = expect(
        await client.get(f"/v1/admin/reconciliations/{started['id']}", headers=admin.headers), 200
    )
    return run


def failing(run: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {c["name"]: c["findings"] for c in run["report"]["checks"] if c["status"] == "fail"}


async def books(client: AsyncClient, app: FastAPI) -> tuple[Actor, list[Actor]]:
    api = Api(client, app)
    community, admin = await api.community()
    members = [await api.member(community["id"], admin) for _ in range(3)]
    for a, b in ((0, 1), (1, 2), (2, 0), (0, 2)):
        await post(
            client,
            community["id"],
            admin,
            [(members[a].account_id, 45), (members[b].account_id, -45)],
        )
    platform = await api.platform_admin()
    return platform, members


async def test_clean_books_pass_and_are_sealed_then_reverified(
    client: AsyncClient, app: FastAPI
) -> None:
    platform, _ = await books(client, app)
    first = await reconcile(client, platform)
    assert first["status"] == "passed", failing(first)
    assert first["report"]["seal"]["high_water"] == 8
    second = await reconcile(client, platform)
    assert second["status"] == "passed"
    assert second["report"]["sealed_entries_verified"] == 8
    assert second["report"]["seal_note"] == "Nothing new to seal."


async def test_a_wrong_cached_balance_is_named(client: AsyncClient, app: FastAPI) -> None:
    platform, members = await books(client, app)
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(
            text(
                "UPDATE accounts SET balance = balance + 5, earned_total = earned_total + 5 WHERE id = :id"
            ),
            {
                "id": members[0].account_id.replace("-", "")
                if app.state.engine.dialect.name == "sqlite"
                else members[0].account_id
            },
        )
    run = await reconcile(client, platform)
    assert run["status"] == "failed"
    findings = failing(run)
    assert set(findings) == {"balances_sum_to_zero", "cached_totals"}
    assert findings["cached_totals"][0]["rows"] == {"account_id": members[0].account_id}
    assert (
        findings["cached_totals"][0]["expected"]["balance"] + 5
        == findings["cached_totals"][0]["found"]["balance"]
    )


async def test_an_edited_sealed_entry_is_reported_as_tampering(
    client: AsyncClient, app: FastAPI
) -> None:
    platform, _ = await books(client, app)
    sealed = await reconcile(client, platform)
    assert sealed["status"] == "passed"
    async with app.state.sessionmaker() as session, session.begin():
        if app.state.engine.dialect.name == "postgresql":
            await session.execute(text("ALTER TABLE entries DISABLE TRIGGER entries_append_only"))
            await session.execute(
                text(
                    "UPDATE entries SET amount = amount + 1, balance_after = balance_after + 1 WHERE id = 3"
                )
            )
            await session.execute(text("ALTER TABLE entries ENABLE TRIGGER entries_append_only"))
        else:
            await session.execute(text("DROP TRIGGER entries_no_update"))
            await session.execute(
                text(
                    "UPDATE entries SET amount = amount + 1, balance_after = balance_after + 1 WHERE id = 3"
                )
            )
    run = await reconcile(client, platform)
    assert run["status"] == "failed"
    assert run["report"]["tampering"][0]["first_bad_block"] == 0
    assert "content_hashes" in failing(run)
    assert run["report"]["seal"] is None


async def test_progress_is_written_while_a_run_works(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress goes through its own short transactions, at most every PROGRESS_EVERY
    seconds (a run of a fraction of a second writes none between start and end)."""
    written: list[int] = []
    write = service._set

    async def recording(sessionmaker: Any, run_id: Any, **values: Any) -> None:
        if "progress" in values:
            written.append(values["progress"])
        await write(sessionmaker, run_id, **values)

    monkeypatch.setattr(service, "_set", recording)
    monkeypatch.setattr(service, "PROGRESS_EVERY", 0.0)
    platform, _ = await books(client, app)
    run = await reconcile(client, platform)
    assert run["status"] == "passed"
    assert written[0] == 1
    assert written[-1] == 100
    assert len(written) > 3
    assert written == sorted(written)


async def test_a_run_sets_the_heap_aside_and_gives_it_back(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector leaves what the process held alone while a run works (gc.freeze), and
    has it all again afterwards; objects frozen by someone else stay frozen."""
    frozen_during: list[int] = []
    first, *others = CHECKS

    async def observing(*args: Any) -> Any:
        frozen_during.append(gc.get_freeze_count())
        return await first(*args)

    monkeypatch.setattr("app.reconciliation.service.CHECKS", (observing, *others))
    platform, _ = await books(client, app)
    assert gc.get_freeze_count() == 0
    assert (await reconcile(client, platform))["status"] == "passed"
    assert frozen_during[0] > 0
    assert gc.get_freeze_count() == 0

    gc.freeze()  # as a service might at start
    try:
        assert (await reconcile(client, platform))["status"] == "passed"
        assert gc.get_freeze_count() > 0  # (not given back: the run did not freeze them)
    finally:
        gc.unfreeze()


@pytest.mark.postgres_only
async def test_a_run_whose_checks_fail_to_run_stops_the_span_digest_it_started(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full sealing run digests the new span beside once its plan is made; should a check
    then fail to run, the run is stored as an error and the digest is stopped, not left
    running."""
    platform, _ = await books(client, app)
    started: list[Any] = []
    digest_beside = seals.digest_span_beside

    async def spy(*args: Any) -> Any:
        task = await digest_beside(*args)
        started.append(task)
        return task

    async def fails(*args: Any) -> Any:
        raise RuntimeError("the check failed to run")

    monkeypatch.setattr(seals, "digest_span_beside", spy)
    _, *others = CHECKS
    monkeypatch.setattr("app.reconciliation.service.CHECKS", (fails, *others))
    run = await reconcile(client, platform)
    assert run["status"] == "error"
    assert "the check failed to run" in run["report"]["error"]
    [task] = started
    assert task.cancelled()

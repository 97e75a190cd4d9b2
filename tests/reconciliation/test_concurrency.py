"""Runs while postings keep landing: no false alarms, and the seals they leave still verify."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from app.models import ReconciliationRun
from app.reconciliation.service import create_run, execute_run
from tests.ledger.helpers import post
from tests.reconciliation.helpers import failing, reconcile, scenario

pytestmark = [pytest.mark.anyio, pytest.mark.postgres_only]


async def run_now(app: FastAPI) -> ReconciliationRun:
    async with app.state.sessionmaker() as session, session.begin():
        run = await create_run(session, community_id=None, seal=True, user_id=None)
        run_id: uuid.UUID = run.id
    return await execute_run(app.state.engine, run_id)


async def test_runs_during_postings_pass_and_their_seals_verify(
    client: AsyncClient, app: FastAPI
) -> None:
    books = await scenario(client, app, members=5)
    accounts = [m.account_id for m in books.members]
    stop = asyncio.Event()
    under_way = asyncio.Event()
    posted = 0

    async def poster(index: int) -> None:
        nonlocal posted
        step = 0
        while not stop.is_set():
            giver = accounts[(index + step) % len(accounts)]
            taker = accounts[(index + step + 1 + index % 3) % len(accounts)]
            if giver != taker:
                await post(client, books.id, books.admin, [(giver, 3), (taker, -3)])
                posted += 1
                if posted >= 5:
                    under_way.set()
            step += 1

    posters = [asyncio.create_task(poster(i)) for i in range(4)]
    runs = []
    try:
        await under_way.wait()
        for _ in range(3):
            runs.append(await run_now(app))
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*posters)

    for run in runs:
        assert run.status == "passed", (run.report.get("checks"), run.report.get("tampering"))
    # After the first seal, runs verify incrementally while postings land: no false alarms.
    assert any(r.report["verification"]["mode"] == "incremental" for r in runs[1:]), [
        r.report["verification"] for r in runs
    ]
    sealed = [r for r in runs if r.report["seal"] is not None]
    assert sealed, [r.report["seal_note"] for r in runs]
    marks = [r.report["seal"]["high_water"] for r in sealed]
    assert marks == sorted(marks)
    assert posted > len(runs)

    final = await reconcile(client, books.platform)
    assert final["status"] == "passed", failing(final)
    assert final["report"]["tampering"] == []
    assert final["report"]["sealed_entries_verified"] == marks[-1]
    assert final["report"]["seal"]["high_water"] == final["report"]["high_water"]
    again = await reconcile(client, books.platform)
    assert again["status"] == "passed"
    assert again["report"]["sealed_entries_verified"] == final["report"]["high_water"]
    # And a full verification of everything those runs sealed agrees.
    full = await reconcile(client, books.platform, full=True)
    assert full["status"] == "passed", (failing(full), full["report"]["tampering"])
    assert full["report"]["verification"]["mode"] == "full"

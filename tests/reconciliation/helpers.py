"""Reconciliation test helpers: a small but complete set of books built through the API, runs
started through the API, and raw SQL that goes behind the service (the tampering a run must
catch) with the append-only triggers and foreign keys switched off for that one change."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.core.clock import utcnow
from app.reconciliation.checks import transaction_content_hash
from tests.factories import Actor, Api, expect
from tests.ledger.helpers import post

TODAY = date.today().isoformat()


def is_sqlite(app: FastAPI) -> bool:
    return bool(app.state.engine.dialect.name == "sqlite")


def db_id(app: FastAPI, value: str | uuid.UUID) -> str:
    """An id as raw SQL sees it: SQLite stores UUIDs as 32 hex digits without dashes."""
    parsed = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    return parsed.hex if is_sqlite(app) else str(parsed)


async def tamper(app: FastAPI, *statements: str, **params: Any) -> None:
    """Run ``statements`` behind the service, as someone with database access would: the
    append-only triggers and foreign keys do not stop them (PostgreSQL: ``session_replication_role
    = replica`` for this transaction; SQLite: triggers dropped and recreated around the change,
    ``PRAGMA foreign_keys=OFF`` on this connection)."""
    if not is_sqlite(app):
        async with app.state.engine.begin() as connection:
            await connection.execute(text("SET LOCAL session_replication_role = replica"))
            for statement in statements:
                await connection.execute(text(statement), params)
        return
    path = make_url(str(app.state.engine.url)).database
    assert path
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA foreign_keys=OFF")
        connection.execute("BEGIN IMMEDIATE")
        triggers = connection.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall()
        for name, _sql in triggers:
            connection.execute(f'DROP TRIGGER "{name}"')
        for statement in statements:
            connection.execute(statement, params)
        for _name, sql in triggers:
            connection.execute(sql)
        connection.execute("COMMIT")
    finally:
        connection.close()


async def scalar(app: FastAPI, statement: str, **params: Any) -> Any:
    async with app.state.engine.connect() as connection:
        return (await connection.execute(text(statement), params)).scalar()


async def reconcile(client: AsyncClient, admin: Actor, **body: Any) -> dict[str, Any]:
    """Start a run and read it back (the test transport finishes background work first)."""
    started = expect(
        await client.post("/v1/admin/reconciliations", json=body, headers=admin.headers), 202
    )
    run: dict[str, Any] = expect(
        await client.get(f"/v1/admin/reconciliations/{started['id']}", headers=admin.headers), 200
    )
    assert run["status"] in {"passed", "failed"}, run["report"]
    return run


def failing(run: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {c["name"]: c["findings"] for c in run["report"]["checks"] if c["status"] == "fail"}


@dataclass
class Scenario:
    """One community with every kind of posting a run looks at."""

    api: Api
    platform: Actor
    community: dict[str, Any]
    admin: Actor
    members: list[Actor]
    transfers: list[str]  # transaction ids, in posting order
    reversed_id: str  # a transfer that was reversed
    reversal_id: str
    exchange: dict[str, Any]  # confirmed (recorded), posted
    proposed: dict[str, Any]  # proposed, not posted
    donation_id: str
    grant_id: str

    @property
    def id(self) -> str:
        return str(self.community["id"])


async def record_exchange(
    client: AsyncClient,
    community_id: str,
    by: Actor,
    provider: Actor,
    receiver: Actor,
    minutes: int,
    *,
    mode: str = "record",
    occurred_on: str = TODAY,
) -> dict[str, Any]:
    body = {
        "providers": [{"member_id": provider.member_id, "minutes": minutes}],
        "receivers": [{"member_id": receiver.member_id, "minutes": minutes}],
        "mode": mode,
        "description": "Helped out",
        "category": "gardening",
        "occurred_on": occurred_on,
    }
    exchange: dict[str, Any] = expect(
        await client.post(
            f"/v1/communities/{community_id}/exchanges", json=body, headers=by.headers
        ),
        201,
    )
    return exchange


async def scenario(client: AsyncClient, app: FastAPI, *, members: int = 3) -> Scenario:
    api = Api(client, app)
    community, admin = await api.community()
    cid = community["id"]
    # Only the first member logs in (to propose an exchange); logins cost time, not coverage.
    people = [await api.member(cid, admin, with_login=i == 0) for i in range(members)]
    a, b, c = people[0], people[1], people[2]
    transfers = []
    for giver, taker, minutes in ((a, b, 45), (b, c, 30), (c, a, 20), (a, c, 15)):
        body = await post(
            client, cid, admin, [(giver.account_id, minutes), (taker.account_id, -minutes)]
        )
        transfers.append(str(body["id"]))
    reversal = expect(
        await client.post(
            f"/v1/transactions/{transfers[1]}/reversal",
            json={"memo": "entered twice"},
            headers={**admin.headers, "Idempotency-Key": str(uuid.uuid4())},
        ),
        201,
    )
    exchange = await record_exchange(client, cid, admin, a, b, 60)
    proposed = await record_exchange(client, cid, a, a, c, 30, mode="propose")
    donation = expect(
        await client.post(
            f"/v1/communities/{cid}/donations",
            json={"minutes": 30, "member_id": a.member_id, "note": "for the chest"},
            headers=admin.headers,
        ),
        201,
    )
    grant = expect(
        await client.post(
            f"/v1/communities/{cid}/grants",
            json={"minutes": 20, "member_id": c.member_id, "reason": "welcome"},
            headers=admin.headers,
        ),
        201,
    )
    return Scenario(
        api=api,
        platform=admin,  # the community's creator is a platform admin
        community=community,
        admin=admin,
        members=people,
        transfers=transfers,
        reversed_id=transfers[1],
        reversal_id=str(reversal["id"]),
        exchange=exchange,
        proposed=proposed,
        donation_id=str(donation["id"]),
        grant_id=str(grant["id"]),
    )


async def insert_transaction(
    app: FastAPI,
    community_id: str,
    kind: str,
    lines: list[tuple[str, int]],
    *,
    reverses_id: str | None = None,
    memo: str = "",
) -> str:
    """Write a transaction and its entries straight into the tables, the way a script with
    database access would: each entry continues its account's chain and the accounts' cached
    figures follow, and the content hash is right, so only what is wrong by design shows."""
    transaction_id = uuid.uuid4()
    occurred_on = date.today()
    posted_at = (utcnow() + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    statements = [
        "INSERT INTO transactions (id, community_id, kind, memo, occurred_on, details, posted_at, "
        "reverses_id, content_hash) VALUES (:tid, :cid, :kind, :memo, "
        f"'{occurred_on.isoformat()}', '{{}}', '{posted_at}', :reverses, :hash)"
    ]
    params: dict[str, Any] = {
        "tid": db_id(app, transaction_id),
        "cid": db_id(app, community_id),
        "kind": kind,
        "memo": memo,
        "reverses": db_id(app, reverses_id) if reverses_id else None,
        "hash": transaction_content_hash(
            transaction_id,
            uuid.UUID(community_id),
            kind,
            occurred_on.isoformat(),
            uuid.UUID(reverses_id) if reverses_id else None,
            memo,
            [(uuid.UUID(account), minutes) for account, minutes in lines],
        ),
    }
    for index, (account, minutes) in enumerate(lines):
        async with app.state.engine.connect() as connection:
            balance, version = (
                await connection.execute(
                    text("SELECT balance, version FROM accounts WHERE id = :id"),
                    {"id": db_id(app, account)},
                )
            ).one()
        params[f"a{index}"] = db_id(app, account)
        params[f"m{index}"] = minutes
        params[f"b{index}"] = balance + minutes
        params[f"v{index}"] = version + 1
        params[f"e{index}"] = max(minutes, 0)
        params[f"s{index}"] = max(-minutes, 0)
        statements.append(
            "INSERT INTO entries (transaction_id, account_id, amount, balance_after, "
            f"account_version, posted_at) VALUES (:tid, :a{index}, :m{index}, :b{index}, "
            f":v{index}, '{posted_at}')"
        )
        statements.append(
            f"UPDATE accounts SET balance = :b{index}, version = :v{index}, "
            f"earned_total = earned_total + :e{index}, spent_total = spent_total + :s{index} "
            f"WHERE id = :a{index}"
        )
    await tamper(app, *statements, **params)
    return str(transaction_id)

"""Databases for the bench: create, migrate, seed 10,000 accounts in one community, drop.

Seeding writes straight into the tables with SQLAlchemy Core (a few bulk INSERTs), using the
app's own table definitions, so it takes about a second rather than 10,000 HTTP calls.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core.clock import utcnow
from app.core.config import Settings
from app.core.ids import new_id
from app.core.security import PasswordService
from app.ledger.accounts import FUND_MAX_BALANCE, FUND_MIN_BALANCE
from app.models import Account, Community, Member, User

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TIMEBANK = PROJECT_ROOT / ".venv" / "bin" / "timebank"
PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
COORDINATOR_EMAIL = "coordinator@bench.example"
COORDINATOR_PASSWORD = "bench-coordinator-pw"  # a throwaway database, dropped at the end
LIMIT = 1_000_000  # community default limits: random transfers never reach them


def timebank_command() -> list[str]:
    """The installed ``timebank`` script, else the same CLI through this interpreter."""
    return [str(TIMEBANK)] if TIMEBANK.exists() else [sys.executable, "-m", "app.cli"]


def pg_url(database: str) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"


@dataclass(frozen=True)
class Seeded:
    community_id: uuid.UUID
    coordinator_user_id: uuid.UUID
    account_ids: list[uuid.UUID]  # the member accounts transfers move hours between


async def create_pg_database(name: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()


async def drop_pg_database(name: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


async def server_version() -> str:
    engine = create_async_engine(PG_ADMIN_URL)
    try:
        async with engine.connect() as conn:
            return str(await conn.scalar(text("SELECT version()")))
    finally:
        await engine.dispose()


def migrate(url: str) -> None:
    """``timebank migrate`` in a child process: exactly the schema the service runs on."""
    env = {**os.environ, "TIMEBANK_DATABASE_URL": url, "TIMEBANK_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [*timebank_command(), "migrate"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=PROJECT_ROOT,
    )
    if result.returncode != 0:
        raise RuntimeError(f"migration of {url} failed:\n{result.stdout}\n{result.stderr}")


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


async def seed(url: str, accounts: int) -> Seeded:
    """One community (limits +-LIMIT minutes), its fund, a coordinator with a login, and
    ``accounts`` members without logins, each with an account."""
    now = utcnow()
    community_id = new_id()
    user_id = new_id()
    passwords = PasswordService(Settings())  # the production argon2 cost: one hash only
    engine: AsyncEngine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(_table(Community)),
                {
                    "id": community_id,
                    "slug": "bench",
                    "name": "Bench Time Bank",
                    "description": "",
                    "timezone": "UTC",
                    "default_min_balance": -LIMIT,
                    "default_max_balance": LIMIT,
                    "confirmation_policy": "counterparty",
                    "auto_confirm_after_days": None,
                    "backdating_window_days": 90,
                    "updated_at": now,
                    "created_at": now,
                },
            )
            await conn.execute(
                insert(_table(User)),
                {
                    "id": user_id,
                    "email": COORDINATOR_EMAIL,
                    "password_hash": passwords.hash(COORDINATOR_PASSWORD),
                    "is_platform_admin": False,
                    "is_active": True,
                    "created_at": now,
                },
            )
            coordinator_member = new_id()
            members: list[dict[str, Any]] = [
                _member(coordinator_member, community_id, user_id, "Bench coordinator", now)
            ]
            members[0]["role"] = "coordinator"
            members[0]["kind"] = "professional"
            member_ids = [new_id() for _ in range(accounts)]
            members += [
                _member(m, community_id, None, f"Member {i:05d}", now)
                for i, m in enumerate(member_ids, 1)
            ]
            await conn.execute(insert(_table(Member)), members)
            account_rows = [
                _account(new_id(), community_id, None, "fund", "Bench fund", now),
            ]
            account_rows[0]["min_balance"] = FUND_MIN_BALANCE
            account_rows[0]["max_balance"] = FUND_MAX_BALANCE
            account_rows.append(
                _account(new_id(), community_id, coordinator_member, "member", "coord", now)
            )
            member_accounts = [
                _account(new_id(), community_id, m, "member", f"Member {i:05d}", now)
                for i, m in enumerate(member_ids, 1)
            ]
            await conn.execute(insert(_table(Account)), account_rows + member_accounts)
        if engine.dialect.name == "postgresql":
            # Planner statistics for the tables just filled, as autovacuum would give a real
            # database. Not for the empty ledger tables: statistics saying "empty" make
            # PostgreSQL plan the foreign-key checks of entries as sequential scans of
            # transactions, and those plans stay cached in pooled connections until
            # autoanalyze runs (the batch phase then ran 10x slower as transactions grew).
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE communities, users, members, accounts"))
        return Seeded(
            community_id=community_id,
            coordinator_user_id=user_id,
            account_ids=[row["id"] for row in member_accounts],
        )
    finally:
        await engine.dispose()


def _member(
    member_id: uuid.UUID,
    community_id: uuid.UUID,
    user_id: uuid.UUID | None,
    name: str,
    now: Any,
) -> dict[str, Any]:
    return {
        "id": member_id,
        "community_id": community_id,
        "user_id": user_id,
        "display_name": name,
        "kind": "citizen",
        "role": "member",
        "status": "active",
        "bio": "",
        "skills": [],
        "needs": [],
        "joined_at": now,
        "updated_at": now,
        "created_at": now,
    }


def _account(
    account_id: uuid.UUID,
    community_id: uuid.UUID,
    member_id: uuid.UUID | None,
    kind: str,
    name: str,
    now: Any,
) -> dict[str, Any]:
    return {
        "id": account_id,
        "community_id": community_id,
        "member_id": member_id,
        "kind": kind,
        "name": name,
        "status": "open",
        "min_balance": None,
        "max_balance": None,
        "balance": 0,
        "version": 0,
        "earned_total": 0,
        "spent_total": 0,
        "updated_at": now,
        "created_at": now,
    }


@dataclass(frozen=True)
class LedgerCheck:
    transactions: int
    entries: int
    balance_sum: int
    idempotency_records: int


async def ledger_check(url: str) -> LedgerCheck:
    """Rows the run left behind, and invariant 2 (balances sum to zero)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            tx = await conn.scalar(text("SELECT count(*) FROM transactions"))
            en = await conn.scalar(text("SELECT count(*) FROM entries"))
            total = await conn.scalar(text("SELECT coalesce(sum(balance), 0) FROM accounts"))
            idem = await conn.scalar(text("SELECT count(*) FROM idempotency_records"))
            return LedgerCheck(int(tx or 0), int(en or 0), int(total or 0), int(idem or 0))
    finally:
        await engine.dispose()

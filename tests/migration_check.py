"""`alembic upgrade head` on an empty PostgreSQL database, then `alembic check` against it."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
from alembic import command
from sqlalchemy.engine import make_url

from app.cli import alembic_config, migrate

PG_URL = os.environ.get(
    "TIMEBANK_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


async def _admin(statement: str) -> None:
    dsn = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


# The ledger's references that triggers check instead of foreign keys (migration 0014):
# alembic check leaves those foreign keys out, so their triggers are counted here.
REFERENCE_TRIGGERS = 2 + 3 * 4  # two child-side checks; delete, update, truncate on 4 parents


async def _references_checked(database: str) -> None:
    dsn = make_url(PG_URL).set(drivername="postgresql", database=database)
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'O' "
            "AND (tgname LIKE '%\\_check\\_references' OR tgname LIKE '%\\_keep\\_%')"
        )
    finally:
        await conn.close()
    if found != REFERENCE_TRIGGERS:
        raise SystemExit(f"expected {REFERENCE_TRIGGERS} reference triggers at head, found {found}")


def main() -> None:
    name = f"tb_migrations_{uuid.uuid4().hex[:8]}"
    url = (
        make_url(PG_URL)
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        migrate(url)
        command.check(alembic_config(url))
        asyncio.run(_references_checked(name))
        print(f"PostgreSQL: migrations reach head and match the models ({name})")
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()

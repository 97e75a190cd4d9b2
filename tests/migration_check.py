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
        print(f"PostgreSQL: migrations reach head and match the models ({name})")
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()

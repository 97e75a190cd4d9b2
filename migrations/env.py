"""Alembic environment: async engine, URL from TIMEBANK_DATABASE_URL (or -x url=...)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from app.core.config import get_settings
from app.core.database import create_engine
from app.models import Base
from app.models.base import UTCDateTime
from app.models.ledger import STATEMENT_CHECKED_REFERENCES

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    return url or config.attributes.get("url") or get_settings().database_url


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render the app's column types as plain SQLAlchemy ones: migrations must not import app
    code that may change later."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _include_object(
    dialect: str,
) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """Compare everything but, on PostgreSQL, the foreign keys that triggers check there
    instead (migration 0014): the models declare them for SQLite and for SQLAlchemy."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return not (
            dialect == "postgresql"
            and type_ == "foreign_key_constraint"
            and name in STATEMENT_CHECKED_REFERENCES
        )

    return include


def _run(connection: Connection) -> None:
    context.configure(
        include_object=_include_object(connection.dialect.name),
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(get_settings(), url=_database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    raise SystemExit("Offline (--sql) migrations are not supported; run against a database.")
run_migrations_online()

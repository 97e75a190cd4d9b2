"""Engine, sessions and the one unit of work per request.

SQLite is the embedded default: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` so that writers
are serialised by the database instead of failing half way. PostgreSQL is the production
database; the ledger locks account rows there (see ``app/ledger``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.core.config import Settings
from app.core.errors import DomainError

# Execution option for a consistent, non-blocking read snapshot (REPEATABLE READ on
# PostgreSQL, a deferred WAL read transaction on SQLite).
READ_SNAPSHOT_OPTION = "timebank_read_snapshot"


def normalise_database_url(raw: str) -> URL:
    """Accept the URLs people paste (``postgres://``, ``postgresql://``, ``sqlite://``) and
    return the async-driver form this service runs on."""
    url = make_url(raw)
    backend = url.get_backend_name()
    if backend in {"postgres", "postgresql"} and url.drivername != "postgresql+asyncpg":
        url = url.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite" and url.drivername != "sqlite+aiosqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    return url


def create_engine(settings: Settings, *, url: str | None = None) -> AsyncEngine:
    db_url = normalise_database_url(url or settings.database_url)
    if db_url.get_backend_name() == "sqlite":
        engine = create_async_engine(
            db_url,
            echo=settings.database_echo,
            # Never put bound values (password hashes, tokens) in logs or error messages.
            hide_parameters=True,
            connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
        )
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
        return engine
    return create_async_engine(
        db_url,
        echo=settings.database_echo,
        hide_parameters=True,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        # No pre-ping: it costs a round trip per request. Connections are recycled before
        # servers or proxies drop idle ones, and a dropped connection is discarded on error.
        pool_recycle=1800,
        # The most recently used connection first: a few warm connections (and backends) do
        # the work, and the rest stay idle instead of taking turns.
        pool_use_lifo=True,
    )


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        configure_sqlite_connection(dbapi_connection, busy_timeout_ms)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that later writes can fail with
        # SQLITE_BUSY without waiting, which would turn a busy moment into an error.
        # Long read-only work (reconciliation) asks for a deferred snapshot instead, so it
        # never holds writers back.
        if connection.get_execution_options().get(READ_SNAPSHOT_OPTION):
            connection.exec_driver_sql("BEGIN DEFERRED")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def configure_sqlite_connection(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    """Every SQLite connection of the service: WAL, foreign keys, a busy timeout, and
    transactions begun explicitly (by SQLAlchemy, or by ``BEGIN IMMEDIATE``), not by the
    sqlite3 module."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's unit of work: committed when the handler returns, rolled back on error.

    Declared with ``scope="function"`` so the commit happens before the response is built:
    a client never sees success for work that failed to commit.

    On SQLite, writers of this process take turns on an asyncio lock before they touch the
    file (SQLite's own busy handler sleeps and polls, which turns a queue into long tails), and
    reads run in a deferred snapshot that never waits for a writer.
    """
    write_lock: asyncio.Lock | None = getattr(request.app.state, "sqlite_write_lock", None)
    if write_lock is None:
        async with _unit_of_work(request, read_only=False) as session:
            yield session
    elif request.method in READ_ONLY_METHODS:
        async with _unit_of_work(request, read_only=True) as session:
            yield session
    else:
        async with write_lock, _unit_of_work(request, read_only=False) as session:
            yield session


@asynccontextmanager
async def _unit_of_work(request: Request, *, read_only: bool) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        if read_only:
            await session.connection(execution_options={READ_SNAPSHOT_OPTION: True})
        try:
            yield session
        except DomainError as exc:
            if exc.persist_changes:
                await session.commit()
            else:
                await session.rollback()
            raise
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]

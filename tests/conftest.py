"""Test harness: every test gets its own database, built by the migrations.

The migrations run once per session into a template; each test then gets a copy (a file copy
on SQLite, ``CREATE DATABASE ... TEMPLATE`` on PostgreSQL), so tests are isolated, exercise the
real schema and triggers, and can use as many real connections as they like.

Backend: ``TIMEBANK_TEST_BACKEND=sqlite`` (default) or ``postgresql``; the PostgreSQL server is
``TIMEBANK_TEST_DATABASE_URL`` (default: the local server at 127.0.0.1:5432, database ``test``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy.engine import make_url

from app.cli import migrate
from app.core.config import Settings
from app.main import create_app

BACKEND = os.environ.get("TIMEBANK_TEST_BACKEND", "sqlite")
PG_URL = os.environ.get(
    "TIMEBANK_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
_counter = itertools.count()


def pytest_report_header() -> str:
    return f"timebank test backend: {BACKEND}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (TIMEBANK_TEST_BACKEND=postgresql)")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


def _pg_admin_dsn() -> str:
    url = make_url(PG_URL)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_url_for(database: str) -> str:
    return (
        make_url(PG_URL)
        .set(drivername="postgresql+asyncpg", database=database)
        .render_as_string(hide_password=False)
    )


async def _pg_admin(*statements: str) -> None:
    conn = await asyncpg.connect(_pg_admin_dsn())
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Template:
    url: str
    path: Path | None  # SQLite only
    name: str | None  # PostgreSQL only


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    if BACKEND == "sqlite":
        path = tmp_path_factory.mktemp("template") / "template.db"
        url = f"sqlite+aiosqlite:///{path}"
        migrate(url)
        yield Template(url=url, path=path, name=None)
        return
    name = f"tb_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"'))
    migrate(_pg_url_for(name))
    try:
        yield Template(url=_pg_url_for(name), path=None, name=name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database_url(template_db: Template, tmp_path: Path) -> AsyncIterator[str]:
    if template_db.path is not None:
        copy = tmp_path / "test.db"
        shutil.copyfile(template_db.path, copy)
        yield f"sqlite+aiosqlite:///{copy}"
        return
    name = f"tb_t_{os.getpid()}_{next(_counter)}"
    await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db.name}"')
    try:
        yield _pg_url_for(name)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "database_url": database_url,
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 64,
        "password_hash_parallelism": 1,
        "log_json": False,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http

"""The world a run happens in: a fresh database, one seeded community, the real server,
and signed-in people. Reuses bench/'s database helpers and server wrapper."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.access.principal import user_subject
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.ids import new_id
from app.core.security import PasswordService, TokenService
from app.ledger.accounts import FUND_MAX_BALANCE, FUND_MIN_BALANCE
from app.models import Account, Community, Member, User
from bench import _seed
from bench._server import Server
from reliability._http import Connection, Unanswered

PASSWORD = "reliability-member-pw"  # a throwaway database, dropped at the end
MIN_BALANCE = -1200  # the service defaults: -20 h credit, +100 h cap
MAX_BALANCE = 6000


SIGNED_IN_THROUGH_API = 4  # the coordinator and 3 members; the rest get minted tokens


@dataclass(frozen=True)
class Person:
    email: str
    user_id: str
    member_id: str
    account_id: str
    token: str = ""

    def with_token(self, token: str) -> Person:
        return Person(self.email, self.user_id, self.member_id, self.account_id, token)


@dataclass
class World:
    backend: str  # "postgresql" or "sqlite"
    url: str
    community_id: str = ""
    fund_account_id: str = ""
    coordinator: Person | None = None
    members: list[Person] = field(default_factory=list)

    @property
    def coord(self) -> Person:
        assert self.coordinator is not None
        return self.coordinator


class Database:
    """A fresh database for one run: PostgreSQL (created and dropped on 127.0.0.1) or a SQLite
    file in a temporary directory."""

    def __init__(self, backend: str, label: str) -> None:
        self.backend = backend
        self.name = f"timebank_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if backend == "postgresql":
            self.url = _seed.pg_url(self.name)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="timebank-reliability-")
            self.url = f"sqlite+aiosqlite:///{Path(self._tmp.name) / 'timebank.db'}"

    @property
    def directory(self) -> Path:
        """Where logs go (the SQLite file's directory, or a fresh temporary one)."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="timebank-reliability-")
        return Path(self._tmp.name)

    async def create(self) -> None:
        if self.backend == "postgresql":
            await _seed.create_pg_database(self.name)
        await asyncio.to_thread(_seed.migrate, self.url)

    async def drop(self) -> None:
        try:
            if self.backend == "postgresql":
                await _seed.drop_pg_database(self.name)
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None


async def seed(url: str, backend: str, members: int) -> World:
    """One community with the default limits, its fund, a coordinator and ``members``
    members, everyone with a login (one argon2 hash shared by all: seeding stays fast)."""
    now = utcnow()
    community_id = new_id()
    password_hash = PasswordService(Settings()).hash(PASSWORD)
    world = World(backend=backend, url=url, community_id=str(community_id))
    engine: AsyncEngine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(_seed._table(Community)),
                {
                    "id": community_id,
                    "slug": "soak",
                    "name": "Soak Time Bank",
                    "description": "",
                    "timezone": "UTC",
                    "default_min_balance": MIN_BALANCE,
                    "default_max_balance": MAX_BALANCE,
                    "confirmation_policy": "counterparty",
                    "auto_confirm_after_days": None,
                    "backdating_window_days": 90,
                    "updated_at": now,
                    "created_at": now,
                },
            )
            users: list[dict[str, Any]] = []
            member_rows: list[dict[str, Any]] = []
            account_rows: list[dict[str, Any]] = []
            fund_id = new_id()
            fund = _seed._account(fund_id, community_id, None, "fund", "Soak fund", now)
            fund["min_balance"] = FUND_MIN_BALANCE
            fund["max_balance"] = FUND_MAX_BALANCE
            account_rows.append(fund)
            world.fund_account_id = str(fund_id)
            people: list[Person] = []
            for index in range(members + 1):
                user_id, member_id, account_id = new_id(), new_id(), new_id()
                coordinator = index == 0
                email = "coordinator@soak.example" if coordinator else f"m{index:03d}@soak.example"
                name = "Soak coordinator" if coordinator else f"Member {index:03d}"
                users.append(
                    {
                        "id": user_id,
                        "email": email,
                        "password_hash": password_hash,
                        "is_platform_admin": False,
                        "is_active": True,
                        "created_at": now,
                    }
                )
                row = _seed._member(member_id, community_id, user_id, name, now)
                if coordinator:
                    row["role"] = "coordinator"
                elif index % 5 == 0:
                    row["kind"] = "professional"
                member_rows.append(row)
                account_rows.append(
                    _seed._account(account_id, community_id, member_id, "member", name, now)
                )
                people.append(Person(email, str(user_id), str(member_id), str(account_id)))
            await conn.execute(insert(_seed._table(User)), users)
            await conn.execute(insert(_seed._table(Member)), member_rows)
            await conn.execute(insert(_seed._table(Account)), account_rows)
        world.coordinator = people[0]
        world.members = people[1:]
        return world
    finally:
        await engine.dispose()


def use_run_secret() -> None:
    """A fresh signing secret for this run, in the environment the server inherits."""
    os.environ["TIMEBANK_SECRET_KEY"] = secrets.token_urlsafe(48)
    os.environ["TIMEBANK_ACCESS_TOKEN_TTL_SECONDS"] = "3600"


def mint_token(person: Person) -> str:
    """An access token exactly as the server issues one (same secret, issuer, audience):
    signing in costs an argon2 verification each, too slow for dozens of people on a shared
    two-core machine, so only a few sign in through the API."""
    tokens = TokenService(Settings(access_token_ttl_seconds=3600))
    return tokens.issue_access_token(user_subject(uuid.UUID(person.user_id)))


async def sign_in(world: World, base_url: str, parallel: int = 4) -> None:
    """The coordinator and a few members sign in through the API (OAuth2 password grant);
    the others get tokens minted with the run's secret."""
    host, port = base_url.removeprefix("http://").split(":")
    gate = asyncio.Semaphore(parallel)

    async def one(person: Person) -> Person:
        async with gate:
            connection = Connection(host, int(port), timeout=60.0)
            form = urllib.parse.urlencode(
                {"grant_type": "password", "username": person.email, "password": PASSWORD}
            ).encode()
            try:
                for _ in range(5):
                    try:
                        reply = await connection.request(
                            "POST",
                            "/v1/auth/token",
                            body=form,
                            content_type="application/x-www-form-urlencoded",
                        )
                    except Unanswered:
                        await asyncio.sleep(0.5)
                        continue
                    if reply.status == 200:
                        return person.with_token(str(reply.json()["access_token"]))
                    raise RuntimeError(f"sign-in of {person.email}: {reply.status} {reply.code}")
                raise RuntimeError(f"sign-in of {person.email}: no answer")
            finally:
                await connection.close()

    everyone = [world.coord, *world.members]
    through_api = await asyncio.gather(*(one(p) for p in everyone[:SIGNED_IN_THROUGH_API]))
    minted = [p.with_token(mint_token(p)) for p in everyone[SIGNED_IN_THROUGH_API:]]
    signed = [*through_api, *minted]
    world.coordinator = signed[0]
    world.members = signed[1:]


def new_server(database_url: str, workers: int, log_path: Path, port: int | None = None) -> Server:
    server = Server(database_url=database_url, workers=workers, log_path=log_path)
    if port is not None:
        server.port = port
    return server


def reconcile_cli(database_url: str) -> tuple[int, str]:
    """``timebank reconcile --seal``: its exit code and output."""
    env = {**os.environ, "TIMEBANK_DATABASE_URL": database_url, "TIMEBANK_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [*_seed.timebank_command(), "reconcile", "--seal"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=_seed.PROJECT_ROOT,
        timeout=300,
    )
    return result.returncode, (result.stdout + result.stderr).strip()

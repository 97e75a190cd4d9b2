"""The ``timebank`` command, run in-process against its own SQLite file.

These tests are about the command, not the database engine: they run on SQLite whichever
backend the rest of the suite uses.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from httpx import ASGITransport, AsyncClient

from app import cli
from app.core.config import get_settings
from app.main import create_app
from tests.conftest import make_settings

ADMIN_PASSWORD = "a long admin password"


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Point the CLI at an empty SQLite file, with cheap password hashing."""
    monkeypatch.chdir(tmp_path)  # no developer's .env
    path = tmp_path / "cli.db"
    monkeypatch.setenv("TIMEBANK_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("TIMEBANK_PASSWORD_HASH_TIME_COST", "1")
    monkeypatch.setenv("TIMEBANK_PASSWORD_HASH_MEMORY_KIB", "64")
    monkeypatch.setenv("TIMEBANK_PASSWORD_HASH_PARALLELISM", "1")
    monkeypatch.setenv("TIMEBANK_LOG_JSON", "false")
    monkeypatch.setenv("TIMEBANK_LOG_LEVEL", "WARNING")
    monkeypatch.delenv("TIMEBANK_ADMIN_PASSWORD", raising=False)
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


@pytest.fixture
def migrated(database: Path) -> Path:
    assert cli.main(["migrate"]) == 0
    return database


def _query(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def _api(path: Path, *requests: tuple[str, str, dict[str, Any]]) -> list[Any]:
    """Sign-ins and reads through the HTTP API against the CLI's database."""

    async def run() -> list[Any]:
        app = create_app(make_settings(f"sqlite+aiosqlite:///{path}"))
        results: list[Any] = []
        async with app.router.lifespan_context(app):
            transport = ASGITransport(app=app)
            async with AsyncClient(transport=transport, base_url="http://testserver") as client:
                headers: dict[str, str] = {}
                for method, url, kwargs in requests:
                    response = await client.request(method, url, headers=headers, **kwargs)
                    results.append(response)
                    if url == "/v1/auth/token" and response.status_code == 200:
                        headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        return results

    return asyncio.run(run())


def _sign_in(email: str, password: str) -> tuple[str, str, dict[str, Any]]:
    form = {"grant_type": "password", "username": email, "password": password}
    return ("POST", "/v1/auth/token", {"data": form})


def test_migrate_builds_the_schema_to_head_and_is_safe_to_repeat(
    database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["migrate"]) == 0
    assert cli.main(["migrate"]) == 0

    assert "database at head" in capsys.readouterr().out
    head = ScriptDirectory.from_config(cli.alembic_config()).get_current_head()
    assert _query(database, "SELECT version_num FROM alembic_version") == [(head,)]
    tables = {row[0] for row in _query(database, "SELECT name FROM sqlite_master")}
    assert {"users", "communities", "members"} <= tables


def test_create_admin_creates_a_platform_admin_who_can_sign_in(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["create-admin", "Ops@Example.org", "--password", ADMIN_PASSWORD])

    assert code == 0
    assert "created platform admin ops@example.org" in capsys.readouterr().out
    signed_in, me = _api(
        migrated, _sign_in("ops@example.org", ADMIN_PASSWORD), ("GET", "/v1/me", {})
    )
    assert signed_in.status_code == 200
    assert me.json()["user"]["is_platform_admin"] is True


def test_create_admin_promotes_an_existing_user_and_sets_the_password(
    migrated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (signed_up,) = _api(
        migrated,
        ("POST", "/v1/users", {"json": {"email": "joan@example.org", "password": "old password!"}}),
    )
    assert signed_up.json()["is_platform_admin"] is False

    monkeypatch.setenv("TIMEBANK_ADMIN_PASSWORD", ADMIN_PASSWORD)
    assert cli.main(["create-admin", "joan@example.org"]) == 0

    assert "promoted existing user joan@example.org" in capsys.readouterr().out
    old, new, me = _api(
        migrated,
        _sign_in("joan@example.org", "old password!"),
        _sign_in("joan@example.org", ADMIN_PASSWORD),
        ("GET", "/v1/me", {}),
    )
    assert old.status_code == 400
    assert new.status_code == 200
    assert me.json()["user"] == {**signed_up.json(), "is_platform_admin": True}
    assert _query(migrated, "SELECT count(*) FROM users") == [(1,)]


@pytest.mark.parametrize(
    ("email", "password", "complaint"),
    [
        ("ops@example.org", "short", "password"),
        ("ops@example.org", "x" * 129, "password"),  # sign-in accepts at most 128
        ("not-an-email", ADMIN_PASSWORD, "email"),
    ],
    ids=["short-password", "long-password", "bad-email"],
)
def test_create_admin_refuses_credentials_sign_up_would_refuse(
    migrated: Path,
    capsys: pytest.CaptureFixture[str],
    email: str,
    password: str,
    complaint: str,
) -> None:
    assert cli.main(["create-admin", email, "--password", password]) == 2

    assert complaint in capsys.readouterr().err
    assert _query(migrated, "SELECT count(*) FROM users") == [(0,)]


def test_create_admin_asks_twice_when_no_password_is_given(
    migrated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([ADMIN_PASSWORD, ADMIN_PASSWORD + "typo"])
    monkeypatch.setattr("app.cli.getpass.getpass", lambda prompt: next(answers))

    assert cli.main(["create-admin", "ops@example.org"]) == 2

    assert "do not match" in capsys.readouterr().err
    assert _query(migrated, "SELECT count(*) FROM users") == [(0,)]


def test_seed_demo_builds_a_community_a_demo_login_can_use(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["seed-demo"]) == 0
    summary = capsys.readouterr().out
    assert "seeded community 'riverside'" in summary
    assert "maggie@riverside.example" in summary

    signed_in, me = _api(
        migrated, _sign_in("maggie@riverside.example", "timebank-demo"), ("GET", "/v1/me", {})
    )
    assert signed_in.status_code == 200
    (membership,) = me.json()["memberships"]
    assert membership["role"] == "coordinator"
    assert membership["status"] == "active"

    _, members = _api(
        migrated,
        _sign_in("maggie@riverside.example", "timebank-demo"),
        ("GET", f"/v1/communities/{membership['community_id']}/members", {}),
    )
    people = members.json()["items"]
    assert len(people) == 10
    assert {m["kind"] for m in people} == {"citizen", "professional", "organization"}
    assert all(m["account_id"] for m in people)


def test_seed_demo_a_second_time_changes_nothing(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["seed-demo"]) == 0
    before = _query(migrated, "SELECT count(*) FROM members")
    capsys.readouterr()

    assert cli.main(["seed-demo"]) == 0

    assert "already exists" in capsys.readouterr().out
    assert _query(migrated, "SELECT count(*) FROM members") == before


def test_openapi_check_passes_when_the_file_matches_and_fails_when_it_drifts(
    database: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = tmp_path / "openapi" / "openapi.json"
    monkeypatch.setattr(cli, "OPENAPI_PATH", spec)

    assert cli.main(["openapi", "--check"]) == 1  # no file yet
    assert cli.main(["openapi"]) == 0
    assert json.loads(spec.read_text())["info"]["title"] == "timebank"
    assert cli.main(["openapi", "--check"]) == 0
    assert "matches the app" in capsys.readouterr().out

    document = json.loads(spec.read_text())
    document["paths"].pop("/healthz")
    spec.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")

    assert cli.main(["openapi", "--check"]) == 1
    assert "out of date" in capsys.readouterr().err


def test_openapi_stdout_prints_the_document_without_writing(
    database: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = tmp_path / "openapi.json"
    monkeypatch.setattr(cli, "OPENAPI_PATH", spec)

    assert cli.main(["openapi", "--stdout"]) == 0

    assert "/v1/auth/token" in json.loads(capsys.readouterr().out)["paths"]
    assert not spec.exists()


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err

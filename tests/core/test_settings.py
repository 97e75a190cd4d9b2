"""Configuration an operator sets through ``TIMEBANK_*`` variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import DEFAULT_SECRET_KEY, Settings, get_settings
from app.core.database import normalise_database_url

LONG_SECRET = "k3Q9-vX2pL7mN4rT8wY1zB6cF0hJ5sD2gA"


@pytest.mark.parametrize("secret", [None, DEFAULT_SECRET_KEY, "short-but-not-default"])
def test_production_refuses_a_default_or_short_secret(secret: str | None) -> None:
    values: dict[str, object] = {"environment": "production"}
    if secret is not None:
        values["secret_key"] = secret
    with pytest.raises(ValidationError, match="TIMEBANK_SECRET_KEY"):
        Settings.model_validate(values)


def test_production_accepts_a_long_random_secret() -> None:
    settings = Settings.model_validate({"environment": "production", "secret_key": LONG_SECRET})
    assert settings.secret_key.get_secret_value() == LONG_SECRET
    assert LONG_SECRET not in repr(settings)


def test_development_runs_with_the_default_secret() -> None:
    assert Settings.model_validate({"environment": "development"}).environment == "development"


def test_settings_come_from_prefixed_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no developer's .env
    monkeypatch.setenv("TIMEBANK_ENVIRONMENT", "production")
    monkeypatch.setenv("TIMEBANK_SECRET_KEY", LONG_SECRET)
    monkeypatch.setenv("TIMEBANK_CORS_ORIGINS", '["https://app.example"]')
    monkeypatch.setenv("TIMEBANK_MAX_PAGE_SIZE", "100")
    get_settings.cache_clear()
    try:
        settings = get_settings()
    finally:
        get_settings.cache_clear()
    assert settings.environment == "production"
    assert settings.cors_origins == ["https://app.example"]
    assert settings.max_page_size == 100


def test_a_default_page_size_above_the_maximum_is_refused() -> None:
    with pytest.raises(ValidationError, match="TIMEBANK_DEFAULT_PAGE_SIZE"):
        Settings.model_validate({"default_page_size": 300, "max_page_size": 200})


@pytest.mark.parametrize(
    ("pasted", "driver", "database"),
    [
        ("postgres://tb:pw@db.example:5432/timebank", "postgresql+asyncpg", "timebank"),
        ("postgresql://tb:pw@db.example/timebank", "postgresql+asyncpg", "timebank"),
        ("postgresql+psycopg://tb:pw@db.example/timebank", "postgresql+asyncpg", "timebank"),
        ("postgresql+asyncpg://tb:pw@db.example/timebank", "postgresql+asyncpg", "timebank"),
        ("sqlite:///./timebank.db", "sqlite+aiosqlite", "./timebank.db"),
        ("sqlite+pysqlite:////data/timebank.db", "sqlite+aiosqlite", "/data/timebank.db"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite", ":memory:"),
    ],
)
def test_pasted_database_urls_run_on_the_async_drivers(
    pasted: str, driver: str, database: str
) -> None:
    url = normalise_database_url(pasted)
    assert url.drivername == driver
    assert url.database == database
    if driver.startswith("postgresql"):
        assert (url.username, url.password, url.host) == ("tb", "pw", "db.example")

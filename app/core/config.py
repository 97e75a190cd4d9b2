"""Configuration from environment variables prefixed ``TIMEBANK_``.

Defaults run locally on a SQLite file; production refuses to start with the default secret.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_KEY = "dev-only-insecure-secret-change-me-0123456789"  # noqa: S105 - refused in production
MINIMUM_SECRET_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIMEBANK_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"

    # Storage
    database_url: str = "sqlite+aiosqlite:///./timebank.db"
    database_pool_size: int = Field(default=20, ge=1, le=200)
    posting_concurrency: int = Field(default=4, ge=1, le=200)
    database_echo: bool = False
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)

    # Tokens
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    jwt_issuer: str = "timebank"
    jwt_audience: str = "timebank-api"
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=300)

    # Passwords (argon2id); tests lower the cost further.
    # OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane): strong against guessing, and a
    # burst of sign-ins does not push a worker past its memory budget.
    password_hash_time_cost: int = Field(default=2, ge=1)
    password_hash_memory_kib: int = Field(default=19_456, ge=8)
    password_hash_parallelism: int = Field(default=1, ge=1)

    # Failed-login throttling (per process; see docs/deployment.md)
    login_window_seconds: int = Field(default=900, ge=1)
    login_max_failures_per_account: int = Field(default=5, ge=1)
    login_max_failures_per_address: int = Field(default=20, ge=1)

    # Reconciliation: a whole-ledger run on PostgreSQL re-verifies every sealed row at least
    # this often, even when the last seal's census shows nothing changed (docs/seals.md);
    # 0 verifies in full every time.
    reconciliation_full_verification_days: int = Field(default=7, ge=0, le=366)

    # HTTP
    allow_signup: bool = True
    cors_origins: list[str] = Field(default_factory=list)
    max_request_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # A keep-alive connection is closed after this many requests (0: never), so connections
    # spread over the workers (app/core/keepalive.py); nginx's keepalive_requests.
    keepalive_requests: int = Field(default=100, ge=0)
    default_page_size: int = Field(default=50, ge=1)
    max_page_size: int = Field(default=200, ge=1)
    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Self:
        if self.environment == "production":
            secret = self.secret_key.get_secret_value()
            if secret == DEFAULT_SECRET_KEY or len(secret) < MINIMUM_SECRET_LENGTH:
                raise ValueError(
                    "TIMEBANK_SECRET_KEY must be set to a random value of at least "
                    f"{MINIMUM_SECRET_LENGTH} characters in production"
                )
        if self.default_page_size > self.max_page_size:
            raise ValueError("TIMEBANK_DEFAULT_PAGE_SIZE cannot exceed TIMEBANK_MAX_PAGE_SIZE")
        return self

    @property
    def full_verification_interval(self) -> timedelta:
        return timedelta(days=self.reconciliation_full_verification_days)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

"""The hour ledger: accounts, balanced transactions, their entries, idempotency records.

Entries and transactions are append-only (the database refuses UPDATE and DELETE: see the
ledger migration). Amounts are signed whole minutes; earned hours are positive.
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.core.clock import utcnow
from app.models.base import Base, BigInt, CreatedAtMixin, IdMixin, JSONDocument

# References that PostgreSQL checks once per statement, by triggers over the inserted rows and
# on the referenced tables, instead of by a foreign key checked row by row (migration 0014:
# the per-row checks were about 45 % of a batch's database work). The models declare them all
# the same: SQLite keeps them as foreign keys, SQLAlchemy orders inserts by them, and
# migrations/env.py leaves these six out of ``alembic check`` on PostgreSQL.
STATEMENT_CHECKED_REFERENCES = frozenset(
    {
        "fk_entries_account_id_accounts",
        "fk_entries_transaction_id_transactions",
        "fk_transactions_community_id_communities",
        "fk_transactions_posted_by_user_id_users",
        "fk_transactions_posted_by_client_id_api_clients",
        "fk_transactions_reverses_id_transactions",
    }
)


class AccountKind(enum.StrEnum):
    member = "member"
    fund = "fund"  # the community chest: donations in, grants out
    clearing = "clearing"  # trades with another community


class AccountStatus(enum.StrEnum):
    open = "open"
    closed = "closed"


class TransactionKind(enum.StrEnum):
    transfer = "transfer"
    adjustment = "adjustment"
    opening = "opening"
    exchange = "exchange"
    donation = "donation"
    grant = "grant"
    reversal = "reversal"


class Account(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("kind IN ('member', 'fund', 'clearing')", name="kind"),
        CheckConstraint("status IN ('open', 'closed')", name="status"),
        CheckConstraint("earned_total >= 0 AND spent_total >= 0", name="totals_not_negative"),
        CheckConstraint(
            "balance = earned_total - spent_total", name="balance_is_earned_minus_spent"
        ),
        CheckConstraint("version >= 0", name="version_not_negative"),
        CheckConstraint(
            "min_balance IS NULL OR max_balance IS NULL OR min_balance <= max_balance",
            name="limits_ordered",
        ),
        Index("ix_accounts_community_id_kind", "community_id", "kind"),
    )

    community_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("communities.id"))
    member_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("members.id"), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=AccountStatus.open.value)
    # Per-account overrides; NULL means "the community's default".
    min_balance: Mapped[int | None] = mapped_column(BigInt)
    max_balance: Mapped[int | None] = mapped_column(BigInt)
    balance: Mapped[int] = mapped_column(BigInt, default=0)
    version: Mapped[int] = mapped_column(BigInt, default=0)
    earned_total: Mapped[int] = mapped_column(BigInt, default=0)
    spent_total: Mapped[int] = mapped_column(BigInt, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AccountLimitChange(IdMixin, Base):
    """Who changed an account's limits, when, from what to what."""

    __tablename__ = "account_limit_changes"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    old_min_balance: Mapped[int | None] = mapped_column(BigInt)
    old_max_balance: Mapped[int | None] = mapped_column(BigInt)
    new_min_balance: Mapped[int | None] = mapped_column(BigInt)
    new_max_balance: Mapped[int | None] = mapped_column(BigInt)
    reason: Mapped[str] = mapped_column(String(500), default="")
    changed_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Transaction(IdMixin, Base):
    __tablename__ = "transactions"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('transfer', 'adjustment', 'opening', 'exchange', 'donation', 'grant', "
            "'reversal')",
            name="kind",
        ),
        CheckConstraint(
            "(kind = 'reversal') = (reverses_id IS NOT NULL)", name="reversal_has_original"
        ),
        Index("ix_transactions_community_id_id", "community_id", "id"),
        # Over the reversals alone (migration 0012): nearly every transaction reverses nothing,
        # and NULLs never collide, so indexing them cost each posting an entry for nothing.
        Index(
            "uq_transactions_reverses_id",
            "reverses_id",
            unique=True,
            postgresql_where=text("reverses_id IS NOT NULL"),
            sqlite_where=text("reverses_id IS NOT NULL"),
        ),
    )

    community_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("communities.id"))
    kind: Mapped[str] = mapped_column(String(20))
    memo: Mapped[str] = mapped_column(String(500), default="")
    occurred_on: Mapped[date] = mapped_column(Date)
    details: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    posted_at: Mapped[datetime] = mapped_column(default=utcnow)
    posted_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    posted_by_client_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_clients.id"))
    # A transaction is reversed at most once: the unique index (table args) is the database's
    # promise.
    reverses_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("transactions.id"))
    content_hash: Mapped[str] = mapped_column(String(64))


class Entry(Base):
    __tablename__ = "entries"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_not_zero"),
        CheckConstraint("account_version >= 1", name="version_positive"),
        # The balance_after chain: one entry per account version, no gaps allowed by the engine.
        UniqueConstraint("account_id", "account_version"),
        # Time ranges of an account's entries read through the unique index above (versions
        # run in time order), narrowed by this one on PostgreSQL: BRIN, cheap to keep on an
        # append-only table in time order (migration 0013).
        Index("ix_entries_posted_at", "posted_at", postgresql_using="brin"),
    )

    # Global posting order (the seal's high-water mark rests on it).
    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    transaction_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("transactions.id"), index=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInt)
    balance_after: Mapped[int] = mapped_column(BigInt)
    account_version: Mapped[int] = mapped_column(BigInt)
    posted_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyRecord(CreatedAtMixin, Base):
    """A client's Idempotency-Key and the one outcome it maps to."""

    __tablename__ = "idempotency_records"
    __table_args__ = (
        UniqueConstraint("principal", "key"),
        Index("ix_idempotency_records_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    principal: Mapped[str] = mapped_column(String(80))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(500))
    response_status: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("transactions.id"))
    expires_at: Mapped[datetime] = mapped_column()

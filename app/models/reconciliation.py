"""Reconciliation runs, the seals they leave, and external-record matches."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    Uuid,
    false,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigInt, CreatedAtMixin, IdMixin, JSONDocument


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    passed = "passed"  # every check clean
    failed = "failed"  # findings
    error = "error"  # the run itself could not finish


class ReconciliationRun(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "reconciliation_runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'passed', 'failed', 'error')", name="status"
        ),
        CheckConstraint("progress >= 0 AND progress <= 100", name="progress_percent"),
    )

    community_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("communities.id"), index=True)
    status: Mapped[str] = mapped_column(String(10), default=RunStatus.queued.value)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    seal_requested: Mapped[bool] = mapped_column(Boolean, default=True)
    # Re-hash every sealed row even where the seal's census says nothing changed.
    full_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    requested_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    findings_count: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    seal_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ledger_seals.id"))


# (Arrays on PostgreSQL, the only backend that keeps account totals; JSON elsewhere.)
_ACCOUNT_IDS = ARRAY(Uuid()).with_variant(JSON(), "sqlite")
_FIGURES = ARRAY(BigInteger()).with_variant(JSON(), "sqlite")


class LedgerSeal(IdMixin, CreatedAtMixin, Base):
    """A link in the seal chain: the digest of every entry (and its transaction's content hash)
    with ``previous_high_water < entry id <= high_water``, chained to the previous seal."""

    __tablename__ = "ledger_seals"

    previous_seal_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ledger_seals.id"), unique=True
    )
    previous_high_water: Mapped[int] = mapped_column(BigInt)
    high_water: Mapped[int] = mapped_column(BigInt)
    entry_count: Mapped[int] = mapped_column(BigInt)
    # Digests of consecutive blocks of entries, so a break is located to its block.
    block_digests: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    digest: Mapped[str] = mapped_column(String(64))
    chained_digest: Mapped[str] = mapped_column(String(64))
    # What the sealing run saw, by row version, and where the blocks start (PostgreSQL only;
    # None before incremental verification existed, or on SQLite): see docs/seals.md. Folded
    # into chained_digest, so editing it is as visible as editing the digests.
    census: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    # Each account's figures over the entries the census counts as old, as aligned arrays:
    # account ids, entries, balances (totals) and earned (spent is earned less the balance).
    # PostgreSQL only, and only on the latest seal: the next run adds the fresh entries to
    # them. Their digest is in the census. Deferred: verifying the chain never loads them.
    totals_accounts: Mapped[list[uuid.UUID] | None] = mapped_column(_ACCOUNT_IDS, deferred=True)
    totals_entries: Mapped[list[int] | None] = mapped_column(_FIGURES, deferred=True)
    totals_balances: Mapped[list[int] | None] = mapped_column(_FIGURES, deferred=True)
    totals_earned: Mapped[list[int] | None] = mapped_column(_FIGURES, deferred=True)


class ExternalRecordMatch(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "external_record_matches"

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("reconciliation_runs.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255), default="")
    uploaded_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    tolerance_days: Mapped[int] = mapped_column(Integer, default=3)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)

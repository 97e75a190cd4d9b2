"""Listings (the assets register), exchanges between members, and their history."""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime

from sqlalchemy import Boolean, CheckConstraint, Date, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.clock import utcnow
from app.models.base import Base, BigInt, CreatedAtMixin, IdMixin, JSONDocument

DEFAULT_CATEGORIES = (
    "companionship",
    "transport",
    "gardening",
    "shopping",
    "household",
    "IT help",
    "teaching",
    "health and wellbeing",
    "admin/office",
    "creative",
)


class ListingType(enum.StrEnum):
    offer = "offer"
    request = "request"


class ListingStatus(enum.StrEnum):
    open = "open"
    paused = "paused"
    closed = "closed"


class ExchangeStatus(enum.StrEnum):
    proposed = "proposed"
    confirmed = "confirmed"  # posted
    rejected = "rejected"
    cancelled = "cancelled"
    disputed = "disputed"
    resolved = "resolved"


class Resolution(enum.StrEnum):
    upheld = "upheld"
    reversed = "reversed"


class PartyRole(enum.StrEnum):
    provider = "provider"
    receiver = "receiver"


class Category(IdMixin, CreatedAtMixin, Base):
    """A community's own category list; a community with none uses DEFAULT_CATEGORIES."""

    __tablename__ = "categories"
    __table_args__ = (UniqueConstraint("community_id", "name"),)

    community_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("communities.id"))
    name: Mapped[str] = mapped_column(String(60))
    position: Mapped[int] = mapped_column(BigInt, default=0)


class Listing(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "listings"
    __table_args__ = (
        CheckConstraint("type IN ('offer', 'request')", name="type"),
        CheckConstraint("status IN ('open', 'paused', 'closed')", name="status"),
        Index("ix_listings_community_id_id", "community_id", "id"),
    )

    community_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("communities.id"))
    owner_member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("members.id"), index=True)
    type: Mapped[str] = mapped_column(String(10))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(4000), default="")
    category: Mapped[str] = mapped_column(String(60))
    tags: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    # "|tag one|tag two|": lets both databases filter by tag with one indexed-free LIKE.
    tag_index: Mapped[str] = mapped_column(String(1300), default="|")
    availability: Mapped[str] = mapped_column(String(500), default="")
    status: Mapped[str] = mapped_column(String(10), default=ListingStatus.open.value)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Exchange(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "exchanges"
    __table_args__ = (
        CheckConstraint(
            "status IN ('proposed', 'confirmed', 'rejected', 'cancelled', 'disputed', 'resolved')",
            name="status",
        ),
        CheckConstraint(
            "resolution IS NULL OR resolution IN ('upheld', 'reversed')", name="resolution"
        ),
        CheckConstraint("total_minutes > 0", name="total_positive"),
        CheckConstraint("fund_minutes >= 0", name="fund_not_negative"),
        Index("ix_exchanges_community_id_id", "community_id", "id"),
        Index("ix_exchanges_status_created_at", "status", "created_at"),
    )

    community_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("communities.id"))
    status: Mapped[str] = mapped_column(String(12), default=ExchangeStatus.proposed.value)
    resolution: Mapped[str | None] = mapped_column(String(10))
    description: Mapped[str] = mapped_column(String(2000))
    category: Mapped[str] = mapped_column(String(60))
    occurred_on: Mapped[date] = mapped_column(Date)
    listing_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("listings.id"))
    split: Mapped[str] = mapped_column(String(10), default="explicit")
    total_minutes: Mapped[int] = mapped_column(BigInt)
    # Indivisible remainder of an equal split, charged to the community fund.
    fund_minutes: Mapped[int] = mapped_column(BigInt, default=0)
    proposed_by_member_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("members.id"))
    created_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    recorded_by_coordinator: Mapped[bool] = mapped_column(Boolean, default=False)
    needs_coordinator: Mapped[bool] = mapped_column(Boolean, default=False)
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("transactions.id"), unique=True
    )
    reversal_transaction_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("transactions.id"), unique=True
    )
    confirmed_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ExchangeParty(IdMixin, Base):
    __tablename__ = "exchange_parties"
    __table_args__ = (
        UniqueConstraint("exchange_id", "member_id"),
        CheckConstraint("role IN ('provider', 'receiver')", name="role"),
        CheckConstraint("minutes > 0", name="minutes_positive"),
    )

    exchange_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("exchanges.id"), index=True)
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("members.id"), index=True)
    role: Mapped[str] = mapped_column(String(10))
    minutes: Mapped[int] = mapped_column(BigInt)
    must_confirm: Mapped[bool] = mapped_column(Boolean, default=True)
    confirmed_at: Mapped[datetime | None] = mapped_column()
    confirmed_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    thanks: Mapped[str | None] = mapped_column(String(500))


class ExchangeEvent(IdMixin, CreatedAtMixin, Base):
    """Every transition: who, when, from what to what, and why."""

    __tablename__ = "exchange_events"

    exchange_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("exchanges.id"), index=True)
    action: Mapped[str] = mapped_column(String(20))
    from_status: Mapped[str | None] = mapped_column(String(12))
    to_status: Mapped[str] = mapped_column(String(12))
    actor_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    actor_member_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("members.id"))
    note: Mapped[str] = mapped_column(String(1000), default="")

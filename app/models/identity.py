"""Users, communities, memberships, partner clients and refresh tokens."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.clock import utcnow
from app.models.base import Base, BigInt, CreatedAtMixin, IdMixin, JSONDocument

HOUR = 60
DEFAULT_MIN_BALANCE = -20 * HOUR
DEFAULT_MAX_BALANCE = 100 * HOUR


class MemberKind(enum.StrEnum):
    """Who someone is; never what they may do."""

    citizen = "citizen"
    professional = "professional"
    organization = "organization"


class MemberRole(enum.StrEnum):
    member = "member"
    coordinator = "coordinator"
    admin = "admin"


ROLE_RANK = {MemberRole.member: 0, MemberRole.coordinator: 1, MemberRole.admin: 2}


class MemberStatus(enum.StrEnum):
    pending = "pending"
    active = "active"
    suspended = "suspended"
    left = "left"


class ConfirmationPolicy(enum.StrEnum):
    """How a proposed exchange becomes confirmed in this community."""

    counterparty = "counterparty"  # the other party confirms
    coordinator = "coordinator"  # a coordinator confirms every exchange


def _enum_values(values: type[enum.StrEnum]) -> str:
    return ", ".join(f"'{v.value}'" for v in values)


class User(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_platform_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)


class Community(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "communities"
    __table_args__ = (
        CheckConstraint("default_min_balance <= 0", name="default_min_not_positive"),
        CheckConstraint("default_max_balance >= 0", name="default_max_not_negative"),
        CheckConstraint(
            f"confirmation_policy IN ({_enum_values(ConfirmationPolicy)})",
            name="confirmation_policy",
        ),
    )

    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    default_min_balance: Mapped[int] = mapped_column(BigInt, default=DEFAULT_MIN_BALANCE)
    default_max_balance: Mapped[int] = mapped_column(BigInt, default=DEFAULT_MAX_BALANCE)
    confirmation_policy: Mapped[str] = mapped_column(
        String(20), default=ConfirmationPolicy.counterparty.value
    )
    auto_confirm_after_days: Mapped[int | None] = mapped_column(BigInt)
    backdating_window_days: Mapped[int] = mapped_column(BigInt, default=90)
    # When the default limits last changed: reconciliation forgives a balance left outside
    # limits that were tightened after it was posted (any other edit does not count).
    limits_changed_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Member(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "members"
    __table_args__ = (
        UniqueConstraint("community_id", "user_id"),
        CheckConstraint(f"kind IN ({_enum_values(MemberKind)})", name="kind"),
        CheckConstraint(f"role IN ({_enum_values(MemberRole)})", name="role"),
        CheckConstraint(f"status IN ({_enum_values(MemberStatus)})", name="status"),
        Index("ix_members_community_id_id", "community_id", "id"),
    )

    community_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("communities.id"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"), index=True)
    display_name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(20))
    role: Mapped[str] = mapped_column(String(20), default=MemberRole.member.value)
    status: Mapped[str] = mapped_column(String(20), default=MemberStatus.pending.value)
    bio: Mapped[str] = mapped_column(String(2000), default="")
    skills: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    needs: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    joined_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiClient(IdMixin, CreatedAtMixin, Base):
    """A partner service (GP practice, council) that signs in with client credentials."""

    __tablename__ = "api_clients"

    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(200))
    community_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("communities.id"), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    created_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    revoked_at: Mapped[datetime | None] = mapped_column()


class RefreshToken(IdMixin, Base):
    """One link of a rotating refresh-token family; only the token's SHA-256 is stored."""

    __tablename__ = "refresh_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    rotated_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

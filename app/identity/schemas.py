from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import available_timezones

from pydantic import AfterValidator, EmailStr, Field, StringConstraints

from app.core.schemas import InputModel, OutputModel, PatchModel, PublicId, TagList
from app.models.identity import (
    DEFAULT_MAX_BALANCE,
    DEFAULT_MIN_BALANCE,
    ConfirmationPolicy,
    MemberKind,
    MemberRole,
    MemberStatus,
)

MAX_LIMIT_MINUTES = 10_000 * 60
_TIMEZONES = frozenset(available_timezones())


def _known_timezone(value: str) -> str:
    if value not in _TIMEZONES:
        raise ValueError(f"unknown IANA timezone {value!r} (for example 'Europe/London')")
    return value


def _lower(value: str) -> str:
    return value.lower()


Email = Annotated[EmailStr, AfterValidator(_lower)]
Password = Annotated[str, StringConstraints(min_length=10, max_length=128)]
Slug = Annotated[
    str,
    StringConstraints(
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])$",
        strip_whitespace=True,
    ),
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=120, strip_whitespace=True)]
LongText = Annotated[str, StringConstraints(max_length=2000)]
Timezone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_known_timezone)]
MinBalance = Annotated[int, Field(ge=-MAX_LIMIT_MINUTES, le=0, strict=True)]
MaxBalance = Annotated[int, Field(ge=0, le=MAX_LIMIT_MINUTES, strict=True)]
Scope = Literal[
    "community:read",
    "members:read",
    "members:write",
    "ledger:read",
    "ledger:write",
    "exchanges:read",
    "exchanges:write",
    "network:read",
]


# --- users and tokens -------------------------------------------------------------------


class UserCreate(InputModel):
    email: Email
    password: Password

    model_config = {
        "json_schema_extra": {
            "example": {"email": "ada@example.org", "password": "correct horse battery"}
        }
    }


class UserRead(OutputModel):
    id: PublicId
    email: str
    is_platform_admin: bool
    created_at: datetime


class TokenResponse(OutputModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105
    expires_in: int = Field(description="Seconds until the access token expires")
    refresh_token: str | None = Field(default=None, description="Absent for client credentials")
    scope: str | None = None


class RefreshRequest(InputModel):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class MembershipSummary(OutputModel):
    member_id: PublicId
    community_id: PublicId
    community_slug: str
    community_name: str
    display_name: str
    kind: MemberKind
    role: MemberRole
    status: MemberStatus


class MeRead(OutputModel):
    user: UserRead
    memberships: list[MembershipSummary]


# --- communities ------------------------------------------------------------------------


class CreatorMembership(InputModel):
    display_name: DisplayName
    kind: MemberKind


class CommunityCreate(InputModel):
    slug: Slug
    name: Name
    description: LongText = ""
    timezone: Timezone = "UTC"
    default_min_balance: MinBalance = DEFAULT_MIN_BALANCE
    default_max_balance: MaxBalance = DEFAULT_MAX_BALANCE
    confirmation_policy: ConfirmationPolicy = ConfirmationPolicy.counterparty
    auto_confirm_after_days: Annotated[int, Field(ge=1, le=365, strict=True)] | None = None
    backdating_window_days: Annotated[int, Field(ge=0, le=3650, strict=True)] = 90
    creator_member: CreatorMembership | None = Field(
        default=None, description="Join the new community as its first admin, with this profile."
    )

    model_config = {
        "json_schema_extra": {
            "example": {
                "slug": "riverside",
                "name": "Riverside Time Bank",
                "timezone": "Europe/London",
                "creator_member": {"display_name": "Sam (coordinator)", "kind": "professional"},
            }
        }
    }


class CommunityUpdate(PatchModel):
    nullable_fields = frozenset({"auto_confirm_after_days"})

    name: Name | None = None
    description: LongText | None = None
    timezone: Timezone | None = None
    default_min_balance: MinBalance | None = None
    default_max_balance: MaxBalance | None = None
    confirmation_policy: ConfirmationPolicy | None = None
    auto_confirm_after_days: Annotated[int, Field(ge=1, le=365, strict=True)] | None = None
    backdating_window_days: Annotated[int, Field(ge=0, le=3650, strict=True)] | None = None


class CommunityRead(OutputModel):
    id: PublicId
    slug: str
    name: str
    description: str
    timezone: str
    default_min_balance: int = Field(description="Credit limit in minutes (negative)")
    default_max_balance: int = Field(description="Balance cap in minutes")
    confirmation_policy: ConfirmationPolicy
    auto_confirm_after_days: int | None
    backdating_window_days: int
    fund_account_id: PublicId | None = None
    created_at: datetime


# --- members ----------------------------------------------------------------------------


class MemberCreate(InputModel):
    """A coordinator adds someone directly (active at once, with or without a login); a user
    who is not yet a member asks to join (pending until a coordinator approves)."""

    display_name: DisplayName
    kind: MemberKind
    role: MemberRole = MemberRole.member
    user_email: Email | None = Field(
        default=None, description="Coordinators only: link an existing user's login."
    )
    bio: LongText = ""
    skills: TagList = Field(default_factory=list)
    needs: TagList = Field(default_factory=list)

    model_config = {
        "json_schema_extra": {
            "example": {
                "display_name": "Dr Amina Okafor",
                "kind": "professional",
                "skills": ["first aid", "baking"],
                "needs": ["gardening"],
            }
        }
    }


class MemberUpdate(PatchModel):
    display_name: DisplayName | None = None
    kind: MemberKind | None = None
    role: MemberRole | None = None
    status: MemberStatus | None = None
    bio: LongText | None = None
    skills: TagList | None = None
    needs: TagList | None = None


class MemberRead(OutputModel):
    id: PublicId
    community_id: PublicId
    display_name: str
    kind: MemberKind
    role: MemberRole
    status: MemberStatus
    has_login: bool
    bio: str
    skills: list[str]
    needs: list[str]
    joined_at: datetime | None
    created_at: datetime
    account_id: PublicId | None = None


# --- partner clients --------------------------------------------------------------------


class ClientCreate(InputModel):
    name: Name
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=8)]


class ClientRead(OutputModel):
    id: PublicId
    client_id: str
    name: str
    community_id: PublicId
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ClientCreated(ClientRead):
    client_secret: str = Field(description="Shown once; store it now.")

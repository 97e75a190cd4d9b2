from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal, Self

from pydantic import Field, StringConstraints, model_validator

from app.core.schemas import InputModel, OutputModel, PatchModel, PublicId, TagList
from app.ledger.posting import MAX_ENTRIES_PER_TRANSACTION
from app.ledger.schemas import AccountRead
from app.models.exchanges import ExchangeStatus, ListingStatus, ListingType, PartyRole, Resolution
from app.models.identity import MemberKind

MAX_PARTY_MINUTES = 24 * 60
MAX_PARTIES = 50
MAX_PARTIES_TOTAL = MAX_ENTRIES_PER_TRANSACTION - 1  # room for the fund's entry

IdText = Annotated[str, StringConstraints(min_length=1, max_length=64)]
CategoryName = Annotated[str, StringConstraints(min_length=1, max_length=60, strip_whitespace=True)]
Note = Annotated[str, StringConstraints(max_length=1000)]
PartyMinutes = Annotated[int, Field(strict=True, gt=0, le=MAX_PARTY_MINUTES)]
FundMinutes = Annotated[int, Field(strict=True, gt=0, le=10_000 * 60)]


# --- categories ---------------------------------------------------------------------------


class CategoriesUpdate(InputModel):
    categories: Annotated[list[CategoryName], Field(min_length=1, max_length=100)]


class CategoriesRead(OutputModel):
    categories: list[str]
    customised: bool = Field(description="false while the community uses the default list")


# --- listings -----------------------------------------------------------------------------


class ListingCreate(InputModel):
    type: ListingType
    title: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    description: Annotated[str, StringConstraints(max_length=4000)] = ""
    category: CategoryName
    tags: TagList = Field(default_factory=list)
    availability: Annotated[str, StringConstraints(max_length=500)] = ""
    owner_member_id: IdText | None = Field(
        default=None, description="Coordinators may list on behalf of a member; default yourself"
    )

    model_config = {
        "json_schema_extra": {
            "example": {
                "type": "offer",
                "title": "Help with the allotment",
                "category": "gardening",
                "tags": ["vegetables", "weekends"],
                "availability": "Saturday mornings",
            }
        }
    }


class ListingUpdate(PatchModel):
    title: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    description: Annotated[str, StringConstraints(max_length=4000)] | None = None
    category: CategoryName | None = None
    tags: TagList | None = None
    availability: Annotated[str, StringConstraints(max_length=500)] | None = None
    status: ListingStatus | None = None


class ListingRead(OutputModel):
    id: PublicId
    community_id: PublicId
    owner_member_id: PublicId
    owner_display_name: str
    owner_kind: MemberKind
    type: ListingType
    title: str
    description: str
    category: str
    tags: list[str]
    availability: str
    status: ListingStatus
    created_at: datetime
    updated_at: datetime


# --- exchanges ----------------------------------------------------------------------------


class PartyInput(InputModel):
    member_id: IdText
    minutes: PartyMinutes | None = Field(
        default=None, description="Required for providers, and for receivers unless split=equal"
    )


class ExchangeCreate(InputModel):
    """A record of service given: providers earn, receivers spend.

    ``split=explicit``: every party states minutes, and providers' sum equals receivers' sum.
    ``split=equal``: receivers share the providers' total equally; the indivisible remainder
    is charged to the community fund (60 minutes for 7 people: 8 each, 4 from the fund).
    ``mode=record`` (coordinators): posted at once, for members without a login.
    """

    providers: Annotated[list[PartyInput], Field(min_length=1, max_length=MAX_PARTIES)]
    receivers: Annotated[list[PartyInput], Field(min_length=1, max_length=MAX_PARTIES)]
    split: Literal["explicit", "equal"] = "explicit"
    mode: Literal["propose", "record"] = "propose"
    description: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    category: CategoryName
    occurred_on: date
    listing_id: IdText | None = None

    @model_validator(mode="after")
    def _minutes_present(self) -> Self:
        if len(self.providers) + len(self.receivers) > MAX_PARTIES_TOTAL:
            # One ledger entry per party plus one for the fund must fit in one transaction;
            # refusing here beats accepting a proposal that no confirmation could ever post.
            raise ValueError(f"at most {MAX_PARTIES_TOTAL} parties in one exchange")
        if any(p.minutes is None for p in self.providers):
            raise ValueError("every provider needs minutes")
        if self.split == "explicit" and any(r.minutes is None for r in self.receivers):
            raise ValueError("with split=explicit every receiver needs minutes")
        if self.split == "equal" and any(r.minutes is not None for r in self.receivers):
            raise ValueError("with split=equal receivers' minutes are computed; leave them out")
        return self

    model_config = {
        "json_schema_extra": {
            "example": {
                "providers": [{"member_id": "01a2...gp", "minutes": 120}],
                "receivers": [{"member_id": "01a2...joan", "minutes": 120}],
                "description": "Taught me to prune the apple trees",
                "category": "gardening",
                "occurred_on": "2026-11-20",
            }
        }
    }


class ConfirmInput(InputModel):
    thanks: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        default=None, description="A receiver's thank-you note, shown on the provider's profile"
    )
    on_behalf_of: IdText | None = Field(
        default=None, description="Coordinators: confirm one party's share (default: everyone)"
    )
    note: Note = ""


class NoteInput(InputModel):
    note: Note = ""


class DisputeInput(InputModel):
    note: Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class ResolveInput(InputModel):
    outcome: Resolution
    note: Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class PartyRead(OutputModel):
    member_id: PublicId
    display_name: str
    kind: MemberKind
    role: PartyRole
    minutes: int
    must_confirm: bool
    confirmed_at: datetime | None
    thanks: str | None


class EventRead(OutputModel):
    action: str
    from_status: ExchangeStatus | None
    to_status: ExchangeStatus
    actor_member_id: PublicId | None
    note: str
    created_at: datetime


class ExchangeRead(OutputModel):
    id: PublicId
    community_id: PublicId
    status: ExchangeStatus
    resolution: Resolution | None
    description: str
    category: str
    occurred_on: date
    listing_id: PublicId | None
    split: Literal["explicit", "equal"]
    total_minutes: int
    fund_minutes: int
    proposed_by_member_id: PublicId | None
    recorded_by_coordinator: bool
    needs_coordinator: bool
    transaction_id: PublicId | None
    reversal_transaction_id: PublicId | None
    confirmed_at: datetime | None
    created_at: datetime
    parties: list[PartyRead]
    events: list[EventRead]


class PendingItem(OutputModel):
    action: Literal["confirm", "answer_dispute", "resolve_dispute", "coordinator_confirm"]
    community_id: PublicId
    exchange: ExchangeRead


class ThanksRead(OutputModel):
    exchange_id: PublicId
    from_member_id: PublicId
    from_display_name: str
    thanks: str
    occurred_on: date


# --- the community fund -------------------------------------------------------------------


class DonationCreate(InputModel):
    minutes: FundMinutes
    member_id: IdText | None = Field(
        default=None, description="Coordinators may donate for a member; default yourself"
    )
    note: Note = ""


class GrantCreate(InputModel):
    member_id: IdText
    minutes: FundMinutes
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class FundMovementRead(OutputModel):
    transaction_id: PublicId
    kind: Literal["donation", "grant"]
    member_id: PublicId
    minutes: int
    note: str
    fund_balance_after: int
    posted_at: datetime


class FundRead(OutputModel):
    account: AccountRead

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Annotated, Any, Literal, cast

from pydantic import AfterValidator, Field, StringConstraints

from app.core.schemas import InputModel, OutputModel, PatchModel, PublicId
from app.ledger.posting import MAX_ENTRIES_PER_TRANSACTION, MAX_ENTRY_MINUTES
from app.models.ledger import AccountKind, AccountStatus, TransactionKind

MAX_DETAILS_BYTES = 4096
MAX_BATCH = 1000

Minutes = Annotated[
    int,
    Field(
        strict=True,
        ge=-MAX_ENTRY_MINUTES,
        le=MAX_ENTRY_MINUTES,
        description="Signed whole minutes: positive is earned, negative is spent",
    ),
]
Memo = Annotated[str, StringConstraints(max_length=500)]
LimitMinutes = Annotated[int, Field(strict=True, ge=-MAX_ENTRY_MINUTES, le=MAX_ENTRY_MINUTES)]


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def _small_document(value: dict[str, Any]) -> dict[str, Any]:
    """At most 4 KB, with keys in a canonical order: a retry that sends the same details with
    keys in another order is the same request (idempotency fingerprints the validated body)."""
    if not value:
        return value
    if len(json.dumps(value)) > MAX_DETAILS_BYTES:
        raise ValueError(f"details must serialise to at most {MAX_DETAILS_BYTES} bytes")
    return cast(dict[str, Any], _sorted_keys(value))


Details = Annotated[dict[str, Any], AfterValidator(_small_document)]


class EntryInput(InputModel):
    account_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    minutes: Minutes


class TransactionCreate(InputModel):
    kind: Literal["transfer", "adjustment", "opening"] = "transfer"
    entries: Annotated[
        list[EntryInput], Field(min_length=1, max_length=MAX_ENTRIES_PER_TRANSACTION)
    ]
    memo: Memo = ""
    occurred_on: date | None = Field(
        default=None, description="Date of service; default today (UTC)"
    )
    details: Details = Field(default_factory=dict, description="Free-form metadata (at most 4 KB)")

    model_config = {
        "json_schema_extra": {
            "example": {
                "kind": "transfer",
                "entries": [
                    {"account_id": "01a2...provider", "minutes": 90},
                    {"account_id": "01a2...receiver", "minutes": -90},
                ],
                "memo": "Gardening with Joan",
                "occurred_on": "2026-11-20",
            }
        }
    }


class BatchCreate(InputModel):
    atomic: bool = Field(
        default=True, description="true: all or nothing; false: each posts on its own"
    )
    transactions: Annotated[list[TransactionCreate], Field(min_length=1, max_length=MAX_BATCH)]


class ReversalCreate(InputModel):
    memo: Memo = ""


class EntryRead(OutputModel):
    id: int | None = None
    account_id: PublicId
    minutes: int
    balance_after: int
    account_version: int


class TransactionRead(OutputModel):
    id: PublicId
    community_id: PublicId
    kind: TransactionKind
    memo: str
    occurred_on: date
    details: dict[str, Any]
    posted_at: datetime
    posted_by_user_id: PublicId | None
    posted_by_client_id: PublicId | None
    reverses_id: PublicId | None
    reversed_by_id: PublicId | None = None
    content_hash: str
    entries: list[EntryRead]


class BatchItemResult(OutputModel):
    index: int
    status: Literal["posted", "refused"]
    transaction: TransactionRead | None = None
    error: dict[str, Any] | None = Field(default=None, description="A problem document")


class BatchResult(OutputModel):
    atomic: bool
    posted: int
    refused: int
    results: list[BatchItemResult]


class AccountRead(OutputModel):
    id: PublicId
    community_id: PublicId
    member_id: PublicId | None
    kind: AccountKind
    name: str
    status: AccountStatus
    balance: int = Field(description="Minutes; earned minus spent")
    min_balance: int = Field(description="Effective credit limit (minutes)")
    max_balance: int = Field(description="Effective balance cap (minutes)")
    min_balance_override: int | None
    max_balance_override: int | None
    available_to_spend: int = Field(description="How many minutes can be spent now")
    earned_total: int = Field(description="Minutes given (earned) in all")
    spent_total: int = Field(description="Minutes received (spent) in all")
    version: int = Field(description="Number of entries on the account")
    updated_at: datetime


class AccountLimitsUpdate(PatchModel):
    nullable_fields = frozenset({"min_balance", "max_balance"})

    min_balance: Annotated[int, Field(strict=True, ge=-MAX_ENTRY_MINUTES, le=0)] | None = Field(
        default=None, description="null returns to the community default"
    )
    max_balance: Annotated[int, Field(strict=True, ge=0, le=MAX_ENTRY_MINUTES)] | None = None
    reason: Annotated[str, StringConstraints(max_length=500)] = ""


class Counterparty(OutputModel):
    account_id: PublicId
    name: str
    member_id: PublicId | None
    minutes: int


class StatementLine(OutputModel):
    entry_id: int
    transaction_id: PublicId
    posted_at: datetime
    occurred_on: date
    kind: TransactionKind
    memo: str
    minutes: int
    balance_after: int
    account_version: int
    counterparties: list[Counterparty]


class Statement(OutputModel):
    account_id: PublicId
    balance: int = Field(description="Now, or at `as_of` when given")
    as_of: datetime | None = None
    items: list[StatementLine]
    next_cursor: str | None = None

"""All ORM models, one module per feature, imported here so metadata is complete."""

from app.models.base import Base
from app.models.exchanges import Category, Exchange, ExchangeEvent, ExchangeParty, Listing
from app.models.identity import ApiClient, Community, Member, RefreshToken, User
from app.models.ledger import (
    Account,
    AccountLimitChange,
    Entry,
    IdempotencyRecord,
    Transaction,
)
from app.models.reconciliation import ExternalRecordMatch, LedgerSeal, ReconciliationRun

__all__ = [
    "Account",
    "AccountLimitChange",
    "ApiClient",
    "Base",
    "Category",
    "Community",
    "Entry",
    "Exchange",
    "ExchangeEvent",
    "ExchangeParty",
    "ExternalRecordMatch",
    "IdempotencyRecord",
    "LedgerSeal",
    "Listing",
    "Member",
    "ReconciliationRun",
    "RefreshToken",
    "Transaction",
    "User",
]

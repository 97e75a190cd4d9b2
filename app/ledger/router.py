"""HTTP for accounts, statements and transactions. Parsing, content negotiation and
idempotent replay only; the rules live in ``service.py`` and ``posting.py``."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel

from app.access.community import (
    CommunityAccess,
    CommunityInPath,
    MemberAccess,
    NotAMember,
    community_guard,
    member_guard,
)
from app.access.errors import (
    CommunityNotFound,
    InsufficientRole,
    InsufficientScope,
    InvalidToken,
    MemberNotFound,
    MembershipInactive,
)
from app.access.principal import CurrentTokenSubject
from app.core.database import DbSession
from app.core.errors import IdempotencyKeyRequired, InvalidCursor, Unprocessable, error_responses
from app.core.pagination import Page, Pagination
from app.ledger import errors, service, single_post
from app.ledger.dependencies import (
    AccountAccess,
    TransactionAccess,
    account_guard,
    transaction_guard,
)
from app.ledger.idempotency import RenderedJSON, run_idempotent
from app.ledger.idempotent_http import (
    IdempotencyHeader,
    RequiredIdempotencyHeader,
    idempotency_key,
    idempotent_reply,
)
from app.ledger.schemas import (
    AccountLimitsUpdate,
    AccountRead,
    BatchCreate,
    BatchResult,
    ReversalCreate,
    Statement,
    TransactionCreate,
    TransactionRead,
)
from app.models.identity import MemberRole
from app.models.ledger import TransactionKind

router = APIRouter(prefix="/v1", tags=["ledger"])

AccountReader = Annotated[
    AccountAccess, Depends(account_guard(MemberRole.coordinator, "ledger:read", allow_owner=True))
]
AccountAdmin = Annotated[
    AccountAccess, Depends(account_guard(MemberRole.admin, None, allow_owner=False))
]
MemberAccountReader = Annotated[
    MemberAccess, Depends(member_guard(MemberRole.coordinator, "ledger:read", allow_self=True))
]
_ledger_writer = community_guard(MemberRole.member, "ledger:write")
LedgerWriter = Annotated[CommunityAccess, Depends(_ledger_writer)]
LedgerReader = Annotated[
    CommunityAccess, Depends(community_guard(MemberRole.coordinator, "ledger:read"))
]
TransactionReader = Annotated[
    TransactionAccess, Depends(transaction_guard(MemberRole.coordinator, "ledger:read"))
]
TransactionReverser = Annotated[
    TransactionAccess, Depends(transaction_guard(MemberRole.coordinator, "ledger:write"))
]

AsOf = Annotated[AwareDatetime | None, Query(description="Balance and entries as at this instant")]
From = Annotated[AwareDatetime | None, Query(alias="from", description="Posted at or after")]
To = Annotated[AwareDatetime | None, Query(alias="to", description="Posted before")]

_AUTH = (InvalidToken, InsufficientRole, InsufficientScope, MembershipInactive)
_COMMUNITY = (*_AUTH, CommunityNotFound, NotAMember)
_POSTING = (
    errors.Unbalanced,
    errors.TooFewEntries,
    errors.ZeroAmount,
    errors.AmountOutOfRange,
    errors.DuplicateAccount,
    errors.AccountNotFound,
    errors.AccountClosed,
    errors.InsufficientBalance,
    errors.OverBalanceCap,
    errors.LedgerBusy,
)
_IDEMPOTENCY = (errors.IdempotencyKeyReused, errors.IdempotencyInProgress)


def _created(
    operation: Callable[[], Awaitable[TransactionRead]],
) -> Callable[[], Awaitable[tuple[int, BaseModel, uuid.UUID | None]]]:
    async def run() -> tuple[int, BaseModel, uuid.UUID | None]:
        read = await operation()
        return status.HTTP_201_CREATED, read, read.id

    return run


# --- accounts -----------------------------------------------------------------------------


@router.get(
    "/accounts/{account_id}",
    operation_id="get_account",
    summary="An account: balance, limits, available to spend, given and received totals",
    response_model=AccountRead,
    responses=error_responses(*_AUTH, errors.AccountNotFound),
)
async def get_account(target: AccountReader) -> AccountRead:
    return service.account_read(target.access.community, target.account)


@router.patch(
    "/accounts/{account_id}",
    operation_id="update_account_limits",
    summary="Override an account's credit limit or cap (community admins); changes are recorded",
    response_model=AccountRead,
    responses=error_responses(*_AUTH, errors.AccountNotFound, errors.InvalidLimits),
)
async def update_account_limits(
    body: AccountLimitsUpdate, target: AccountAdmin, session: DbSession
) -> AccountRead:
    account = await service.update_limits(session, target.access, target.account, body)
    return service.account_read(target.access.community, account)


@router.get(
    "/members/{member_id}/account",
    operation_id="get_member_account",
    summary="A member's account",
    response_model=AccountRead,
    responses=error_responses(*_AUTH, MemberNotFound),
)
async def get_member_account(target: MemberAccountReader, session: DbSession) -> AccountRead:
    account = await service.member_account(session, target.member.id)
    return service.account_read(target.access.community, account)


@router.get(
    "/accounts/{account_id}/entries",
    operation_id="get_account_statement",
    summary="Statement: entries newest first with running balance; `Accept: text/csv` for CSV",
    response_model=Statement,
    responses={
        **error_responses(*_AUTH, errors.AccountNotFound, InvalidCursor),
        200: {"content": {"text/csv": {}}, "description": "The statement (JSON or CSV)"},
    },
)
async def get_account_statement(
    request: Request,
    target: AccountReader,
    session: DbSession,
    page: Pagination,
    posted_from: From = None,
    posted_to: To = None,
    as_of: AsOf = None,
) -> Response | Statement:
    if "text/csv" in request.headers.get("accept", ""):
        rows = service.statement_csv(
            request.app.state.sessionmaker,
            target.account,
            posted_from=posted_from,
            posted_to=posted_to,
            as_of=as_of,
        )
        filename = f"statement-{target.account.id}.csv"
        return StreamingResponse(
            rows,
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return await service.statement(
        session, target.account, page, posted_from=posted_from, posted_to=posted_to, as_of=as_of
    )


# --- transactions -------------------------------------------------------------------------


@router.post(
    "/communities/{community_id}/transactions",
    operation_id="create_transaction",
    summary="Post a balanced transaction (coordinators, admins, clients with ledger:write)",
    status_code=status.HTTP_201_CREATED,
    response_model=TransactionRead,
    responses=error_responses(
        *_COMMUNITY, *_POSTING, *_IDEMPOTENCY, IdempotencyKeyRequired, Unprocessable
    ),
)
async def create_transaction(
    request: Request,
    body: TransactionCreate,
    subject: CurrentTokenSubject,
    community: CommunityInPath,
    key_header: RequiredIdempotencyHeader,
) -> Response:
    # Well-formed requests are answered by app/ledger/fast_path.py, with the same function.
    return await single_post.answer(
        request.app.state.single_poster, subject, community, key_header, body, request.url.path
    )


@router.post(
    "/communities/{community_id}/transactions/batch",
    operation_id="create_transaction_batch",
    summary="Post up to 1,000 transactions: all or nothing (`atomic`), or each on its own",
    response_model=BatchResult,
    responses=error_responses(
        *_COMMUNITY,
        *_IDEMPOTENCY,
        IdempotencyKeyRequired,
        errors.BatchRefused,
        errors.LedgerBusy,
    ),
)
async def create_transaction_batch(
    request: Request,
    body: BatchCreate,
    access: LedgerWriter,
    session: DbSession,
    key_header: RequiredIdempotencyHeader,
) -> Response:
    key = idempotency_key(request, access.principal, key_header, body)

    async def run() -> tuple[int, RenderedJSON, uuid.UUID | None]:
        return status.HTTP_200_OK, await service.create_batch(session, access, body), None

    return idempotent_reply(await run_idempotent(session, key, run))


@router.get(
    "/communities/{community_id}/transactions",
    operation_id="list_transactions",
    summary="Transactions of a community, newest first (coordinators, clients with ledger:read)",
    response_model=Page[TransactionRead],
    responses=error_responses(*_COMMUNITY, InvalidCursor),
)
async def list_transactions(
    access: LedgerReader,
    session: DbSession,
    page: Pagination,
    account_id: Annotated[str | None, Query(max_length=64)] = None,
    kind: TransactionKind | None = None,
    posted_from: From = None,
    posted_to: To = None,
    occurred_from: date | None = None,
    occurred_to: date | None = None,
) -> Page[TransactionRead]:
    items, next_cursor = await service.list_transactions(
        session,
        access.community,
        page,
        account_id=account_id,
        kind=kind,
        posted_from=posted_from,
        posted_to=posted_to,
        occurred_from=occurred_from,
        occurred_to=occurred_to,
    )
    return Page(items=items, next_cursor=next_cursor)


@router.get(
    "/transactions/{transaction_id}",
    operation_id="get_transaction",
    summary="One transaction with its entries",
    response_model=TransactionRead,
    responses=error_responses(*_AUTH, errors.TransactionNotFound),
)
async def get_transaction(target: TransactionReader, session: DbSession) -> TransactionRead:
    return (await service.transaction_reads(session, [target.transaction]))[0]


@router.post(
    "/transactions/{transaction_id}/reversal",
    operation_id="reverse_transaction",
    summary="Reverse a transaction with its mirror image (once; coordinators, ledger:write)",
    status_code=status.HTTP_201_CREATED,
    response_model=TransactionRead,
    responses=error_responses(
        *_AUTH,
        errors.TransactionNotFound,
        errors.AlreadyReversed,
        errors.ReversalNotReversible,
        *_POSTING,
        *_IDEMPOTENCY,
    ),
)
async def reverse_transaction(
    request: Request,
    target: TransactionReverser,
    session: DbSession,
    body: ReversalCreate | None = None,
    key_header: IdempotencyHeader = None,
) -> Response:
    payload = body or ReversalCreate()
    key = idempotency_key(request, target.access.principal, key_header, payload)
    outcome = await run_idempotent(
        session,
        key,
        _created(
            lambda: service.reverse_transaction(
                session, target.access, target.transaction, payload.memo
            )
        ),
    )
    return idempotent_reply(outcome)

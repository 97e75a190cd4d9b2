"""HTTP for listings, exchanges, the community fund and the inbox. Thin: parse, call one
service function, shape the reply."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import BaseModel

from app.access.community import (
    CommunityAccess,
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
    NotAUser,
)
from app.access.principal import CurrentUser
from app.core.database import DbSession
from app.core.errors import InvalidCursor, error_responses
from app.core.pagination import Page, Pagination
from app.exchanges import errors, service
from app.exchanges.dependencies import ExchangeAccess, ListingAccess, exchange_guard, listing_guard
from app.exchanges.schemas import (
    CategoriesRead,
    CategoriesUpdate,
    ConfirmInput,
    DisputeInput,
    DonationCreate,
    ExchangeCreate,
    ExchangeRead,
    FundRead,
    GrantCreate,
    ListingCreate,
    ListingRead,
    ListingUpdate,
    NoteInput,
    PendingItem,
    ResolveInput,
    ThanksRead,
)
from app.ledger import errors as ledger_errors
from app.ledger import service as ledger_service
from app.ledger.idempotency import run_idempotent
from app.ledger.idempotent_http import IdempotencyHeader, idempotency_key, idempotent_reply
from app.ledger.schemas import TransactionRead
from app.models import Exchange
from app.models.exchanges import ExchangeStatus, ListingStatus, ListingType
from app.models.identity import MemberKind, MemberRole

router = APIRouter(prefix="/v1")

CommunityMember = Annotated[
    CommunityAccess, Depends(community_guard(MemberRole.member, "exchanges:read"))
]
CommunityWriter = Annotated[
    CommunityAccess, Depends(community_guard(MemberRole.member, "exchanges:write"))
]
CommunityAdmin = Annotated[CommunityAccess, Depends(community_guard(MemberRole.admin, None))]
ListingReader = Annotated[ListingAccess, Depends(listing_guard("exchanges:read"))]
ListingWriter = Annotated[ListingAccess, Depends(listing_guard("exchanges:write"))]
ExchangeReader = Annotated[ExchangeAccess, Depends(exchange_guard("exchanges:read"))]
ExchangeWriter = Annotated[ExchangeAccess, Depends(exchange_guard("exchanges:write"))]
MemberViewer = Annotated[
    MemberAccess, Depends(member_guard(MemberRole.member, "members:read", allow_self=True))
]


_AUTH = (
    InvalidToken,
    InsufficientRole,
    InsufficientScope,
    MembershipInactive,
    CommunityNotFound,
    NotAMember,
)
_POSTING = (
    ledger_errors.InsufficientBalance,
    ledger_errors.OverBalanceCap,
    ledger_errors.AccountClosed,
    ledger_errors.LedgerBusy,
    ledger_errors.IdempotencyKeyReused,
    ledger_errors.IdempotencyInProgress,
)


async def _exchange_read(session: DbSession, exchange_id: uuid.UUID) -> ExchangeRead:
    exchange = await session.get(Exchange, exchange_id)
    assert exchange is not None
    return (await service.exchange_reads(session, [exchange]))[0]


# --- categories ---------------------------------------------------------------------------


@router.get(
    "/communities/{community_id}/categories",
    tags=["listings"],
    operation_id="list_categories",
    summary="The community's categories (a default list until an admin sets its own)",
    response_model=CategoriesRead,
    responses=error_responses(*_AUTH),
)
async def list_categories(access: CommunityMember, session: DbSession) -> CategoriesRead:
    names, customised = await service.categories_of(session, access.community)
    return CategoriesRead(categories=names, customised=customised)


@router.put(
    "/communities/{community_id}/categories",
    tags=["listings"],
    operation_id="set_categories",
    summary="Replace the community's category list (community admins)",
    response_model=CategoriesRead,
    responses=error_responses(*_AUTH),
)
async def set_categories(
    body: CategoriesUpdate, access: CommunityAdmin, session: DbSession
) -> CategoriesRead:
    return CategoriesRead(
        categories=await service.set_categories(session, access.community, body.categories),
        customised=True,
    )


# --- listings -----------------------------------------------------------------------------


@router.post(
    "/communities/{community_id}/listings",
    tags=["listings"],
    operation_id="create_listing",
    summary="Offer a skill or request help",
    status_code=status.HTTP_201_CREATED,
    response_model=ListingRead,
    responses=error_responses(
        *_AUTH, errors.UnknownCategory, errors.ListingNotEditable, errors.PartyNotFound
    ),
)
async def create_listing(
    body: ListingCreate, access: CommunityWriter, session: DbSession
) -> ListingRead:
    listing = await service.create_listing(session, access, body)
    return (await service.listing_reads(session, [listing]))[0]


@router.get(
    "/communities/{community_id}/listings",
    tags=["listings"],
    operation_id="list_listings",
    summary="Search offers and requests, newest first",
    response_model=Page[ListingRead],
    responses=error_responses(*_AUTH, InvalidCursor),
)
async def list_listings(
    access: CommunityMember,
    session: DbSession,
    page: Pagination,
    q: Annotated[
        str | None, Query(max_length=200, description="Words in title or description")
    ] = None,
    listing_type: Annotated[ListingType | None, Query(alias="type")] = None,
    category: Annotated[str | None, Query(max_length=60)] = None,
    tag: Annotated[str | None, Query(max_length=40)] = None,
    owner_kind: MemberKind | None = None,
    owner_member_id: Annotated[str | None, Query(max_length=64)] = None,
    listing_status: Annotated[ListingStatus | None, Query(alias="status")] = ListingStatus.open,
) -> Page[ListingRead]:
    listings, next_cursor = await service.list_listings(
        session,
        access.community,
        page,
        text=q,
        listing_type=listing_type.value if listing_type else None,
        category=category,
        tag=tag,
        owner_kind=owner_kind,
        owner_member_id=owner_member_id,
        status=listing_status,
    )
    return Page(items=await service.listing_reads(session, listings), next_cursor=next_cursor)


@router.get(
    "/listings/{listing_id}",
    tags=["listings"],
    operation_id="get_listing",
    summary="One listing",
    response_model=ListingRead,
    responses=error_responses(*_AUTH, errors.ListingNotFound),
)
async def get_listing(target: ListingReader, session: DbSession) -> ListingRead:
    return (await service.listing_reads(session, [target.listing]))[0]


@router.patch(
    "/listings/{listing_id}",
    tags=["listings"],
    operation_id="update_listing",
    summary="Edit, pause or close a listing (its owner, or a coordinator)",
    response_model=ListingRead,
    responses=error_responses(
        *_AUTH, errors.ListingNotFound, errors.ListingNotEditable, errors.UnknownCategory
    ),
)
async def update_listing(
    body: ListingUpdate, target: ListingWriter, session: DbSession
) -> ListingRead:
    listing = await service.update_listing(session, target.access, target.listing, body)
    return (await service.listing_reads(session, [listing]))[0]


# --- exchanges ----------------------------------------------------------------------------

_PROPOSE_ERRORS = (
    errors.PartyNotFound,
    errors.PartyNotActive,
    errors.DuplicateParty,
    errors.ExchangeUnbalanced,
    errors.OccurredOnOutOfRange,
    errors.ProposerMustBeParty,
    errors.CoordinatorRequired,
    errors.UnknownCategory,
    errors.ListingNotFound,
)


@router.post(
    "/communities/{community_id}/exchanges",
    tags=["exchanges"],
    operation_id="create_exchange",
    summary="Propose an exchange (a party), or record one at once (coordinators, mode=record)",
    status_code=status.HTTP_201_CREATED,
    response_model=ExchangeRead,
    responses=error_responses(*_AUTH, *_PROPOSE_ERRORS, *_POSTING),
)
async def create_exchange(
    request: Request,
    body: ExchangeCreate,
    access: CommunityWriter,
    session: DbSession,
    key_header: IdempotencyHeader = None,
) -> Response:
    async def run() -> tuple[int, BaseModel, uuid.UUID | None]:
        exchange = await service.propose_exchange(session, access, body)
        return (
            status.HTTP_201_CREATED,
            await _exchange_read(session, exchange.id),
            exchange.transaction_id,
        )

    return idempotent_reply(
        await run_idempotent(
            session, idempotency_key(request, access.principal, key_header, body), run
        )
    )


@router.get(
    "/communities/{community_id}/exchanges",
    tags=["exchanges"],
    operation_id="list_exchanges",
    summary="Exchanges, newest first: all of them for coordinators, your own for members",
    response_model=Page[ExchangeRead],
    responses=error_responses(*_AUTH, InvalidCursor),
)
async def list_exchanges(
    access: CommunityMember,
    session: DbSession,
    page: Pagination,
    exchange_status: Annotated[ExchangeStatus | None, Query(alias="status")] = None,
    member_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[ExchangeRead]:
    exchanges, next_cursor = await service.list_exchanges(
        session, access, page, status=exchange_status, member_id=member_id
    )
    return Page(items=await service.exchange_reads(session, exchanges), next_cursor=next_cursor)


@router.get(
    "/exchanges/{exchange_id}",
    tags=["exchanges"],
    operation_id="get_exchange",
    summary="One exchange with its parties and every transition",
    response_model=ExchangeRead,
    responses=error_responses(*_AUTH, errors.ExchangeNotFound),
)
async def get_exchange(target: ExchangeReader, session: DbSession) -> ExchangeRead:
    return (await service.exchange_reads(session, [target.exchange]))[0]


_TRANSITION_ERRORS = (errors.ExchangeNotFound, errors.InvalidTransition, errors.NotAParty)


@router.post(
    "/exchanges/{exchange_id}/confirm",
    tags=["exchanges"],
    operation_id="confirm_exchange",
    summary="Confirm your share (or, coordinators, the group's); posts when all are in",
    response_model=ExchangeRead,
    responses=error_responses(
        *_AUTH,
        *_TRANSITION_ERRORS,
        *_POSTING,
        errors.AlreadyConfirmed,
        errors.CannotConfirmOwnProposal,
        errors.ThanksFromReceiversOnly,
        errors.CoordinatorRequired,
        errors.PartyNotFound,
    ),
)
async def confirm_exchange(
    request: Request,
    target: ExchangeWriter,
    session: DbSession,
    body: ConfirmInput | None = None,
    key_header: IdempotencyHeader = None,
) -> Response:
    payload = body or ConfirmInput()

    async def run() -> tuple[int, BaseModel, uuid.UUID | None]:
        exchange = await service.confirm_exchange(session, target.access, target.exchange, payload)
        return (
            status.HTTP_200_OK,
            await _exchange_read(session, exchange.id),
            exchange.transaction_id,
        )

    key = idempotency_key(request, target.access.principal, key_header, payload)
    return idempotent_reply(await run_idempotent(session, key, run))


@router.post(
    "/exchanges/{exchange_id}/reject",
    tags=["exchanges"],
    operation_id="reject_exchange",
    summary="Reject a proposal (the counterparty, or a coordinator)",
    response_model=ExchangeRead,
    responses=error_responses(*_AUTH, *_TRANSITION_ERRORS),
)
async def reject_exchange(
    target: ExchangeWriter, session: DbSession, body: NoteInput | None = None
) -> ExchangeRead:
    exchange = await service.reject_exchange(
        session, target.access, target.exchange, (body or NoteInput()).note
    )
    return await _exchange_read(session, exchange.id)


@router.post(
    "/exchanges/{exchange_id}/cancel",
    tags=["exchanges"],
    operation_id="cancel_exchange",
    summary="Withdraw your proposal (the proposer, or a coordinator)",
    response_model=ExchangeRead,
    responses=error_responses(*_AUTH, *_TRANSITION_ERRORS),
)
async def cancel_exchange(
    target: ExchangeWriter, session: DbSession, body: NoteInput | None = None
) -> ExchangeRead:
    exchange = await service.cancel_exchange(
        session, target.access, target.exchange, (body or NoteInput()).note
    )
    return await _exchange_read(session, exchange.id)


@router.post(
    "/exchanges/{exchange_id}/dispute",
    tags=["exchanges"],
    operation_id="dispute_exchange",
    summary="Dispute a posted exchange, or add your side to an open dispute",
    response_model=ExchangeRead,
    responses=error_responses(*_AUTH, *_TRANSITION_ERRORS),
)
async def dispute_exchange(
    body: DisputeInput, target: ExchangeWriter, session: DbSession
) -> ExchangeRead:
    exchange = await service.dispute_exchange(session, target.access, target.exchange, body.note)
    return await _exchange_read(session, exchange.id)


@router.post(
    "/exchanges/{exchange_id}/resolve",
    tags=["exchanges"],
    operation_id="resolve_exchange",
    summary="Resolve a dispute: uphold it, or reverse its transaction (coordinators)",
    response_model=ExchangeRead,
    responses=error_responses(
        *_AUTH,
        *_TRANSITION_ERRORS,
        *_POSTING,
        errors.CoordinatorRequired,
        ledger_errors.AlreadyReversed,
    ),
)
async def resolve_exchange(
    request: Request,
    body: ResolveInput,
    target: ExchangeWriter,
    session: DbSession,
    key_header: IdempotencyHeader = None,
) -> Response:
    async def run() -> tuple[int, BaseModel, uuid.UUID | None]:
        exchange = await service.resolve_exchange(
            session, target.access, target.exchange, body.outcome, body.note
        )
        read = await _exchange_read(session, exchange.id)
        return status.HTTP_200_OK, read, exchange.reversal_transaction_id

    key = idempotency_key(request, target.access.principal, key_header, body)
    return idempotent_reply(await run_idempotent(session, key, run))


@router.get(
    "/me/pending",
    tags=["exchanges"],
    operation_id="get_pending",
    summary="What awaits you across your communities: confirmations and disputes",
    response_model=Page[PendingItem],
    responses=error_responses(InvalidToken, NotAUser, InvalidCursor),
)
async def get_pending(user: CurrentUser, session: DbSession, page: Pagination) -> Page[PendingItem]:
    items, next_cursor = await service.pending_for(session, user, page)
    return Page(items=items, next_cursor=next_cursor)


@router.get(
    "/members/{member_id}/thanks",
    tags=["exchanges"],
    operation_id="list_member_thanks",
    summary="Thank-you notes from the people a member helped",
    response_model=Page[ThanksRead],
    responses=error_responses(*_AUTH, MemberNotFound, InvalidCursor),
)
async def list_member_thanks(
    target: MemberViewer, session: DbSession, page: Pagination
) -> Page[ThanksRead]:
    items, next_cursor = await service.thanks_for(session, target.member, page)
    return Page(items=items, next_cursor=next_cursor)


# --- the community fund -------------------------------------------------------------------


@router.post(
    "/communities/{community_id}/donations",
    tags=["fund"],
    operation_id="create_donation",
    summary="Give hours to the community fund",
    status_code=status.HTTP_201_CREATED,
    response_model=TransactionRead,
    responses=error_responses(
        *_AUTH, *_POSTING, errors.CoordinatorRequired, errors.PartyNotFound, errors.PartyNotActive
    ),
)
async def create_donation(
    request: Request,
    body: DonationCreate,
    access: CommunityWriter,
    session: DbSession,
    key_header: IdempotencyHeader = None,
) -> Response:
    async def run() -> tuple[int, BaseModel, uuid.UUID | None]:
        posted = await service.donate(session, access, body)
        return status.HTTP_201_CREATED, ledger_service.transaction_read(posted), posted.id

    return idempotent_reply(
        await run_idempotent(
            session, idempotency_key(request, access.principal, key_header, body), run
        )
    )


@router.post(
    "/communities/{community_id}/grants",
    tags=["fund"],
    operation_id="create_grant",
    summary="Grant hours from the fund to a member, with a reason (coordinators)",
    status_code=status.HTTP_201_CREATED,
    response_model=TransactionRead,
    responses=error_responses(
        *_AUTH, *_POSTING, errors.CoordinatorRequired, errors.PartyNotFound, errors.PartyNotActive
    ),
)
async def create_grant(
    request: Request,
    body: GrantCreate,
    access: CommunityWriter,
    session: DbSession,
    key_header: IdempotencyHeader = None,
) -> Response:
    async def run() -> tuple[int, BaseModel, uuid.UUID | None]:
        posted = await service.grant(session, access, body)
        return status.HTTP_201_CREATED, ledger_service.transaction_read(posted), posted.id

    return idempotent_reply(
        await run_idempotent(
            session, idempotency_key(request, access.principal, key_header, body), run
        )
    )


@router.get(
    "/communities/{community_id}/fund",
    tags=["fund"],
    operation_id="get_fund",
    summary="The community fund's balance (history: GET /v1/accounts/{account_id}/entries)",
    response_model=FundRead,
    responses=error_responses(*_AUTH),
)
async def get_fund(access: CommunityMember, session: DbSession) -> FundRead:
    account = await service.fund_account(session, access.community)
    return FundRead(account=ledger_service.account_read(access.community, account))

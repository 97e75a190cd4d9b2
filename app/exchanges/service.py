"""What members do: list what they can give and need, record help given, confirm it, and see
hours move. Citizens and professionals are on the same footing everywhere in this file: a
member's kind never changes a rule."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.community import CommunityAccess
from app.core.clock import utcnow
from app.core.ids import parse_id
from app.core.pagination import PageParams, paginate_by_id
from app.exchanges import errors
from app.exchanges.schemas import (
    ConfirmInput,
    DonationCreate,
    EventRead,
    ExchangeCreate,
    ExchangeRead,
    GrantCreate,
    ListingCreate,
    ListingRead,
    ListingUpdate,
    PartyRead,
    PendingItem,
    ThanksRead,
)
from app.ledger import service as ledger_service
from app.ledger.accounts import fund_accounts
from app.ledger.errors import AlreadyReversed, LedgerError
from app.ledger.posting import PostedTransaction, Poster, PostingRequest, post_transaction
from app.models import (
    Account,
    Category,
    Community,
    Entry,
    Exchange,
    ExchangeEvent,
    ExchangeParty,
    Listing,
    Member,
    Transaction,
    User,
)
from app.models.exchanges import (
    DEFAULT_CATEGORIES,
    ExchangeStatus,
    ListingStatus,
    PartyRole,
    Resolution,
)
from app.models.identity import ConfirmationPolicy, MemberKind, MemberRole, MemberStatus
from app.models.ledger import TransactionKind

# --- who is acting ------------------------------------------------------------------------


def acts_as_coordinator(access: CommunityAccess, *client_scopes: str) -> bool:
    """Coordinators and admins; partner clients holding one of ``client_scopes``
    (default ``exchanges:write``)."""
    principal = access.principal
    if principal.client is not None:
        return any(principal.has_scope(s) for s in client_scopes or ("exchanges:write",))
    return access.has_role(MemberRole.coordinator)


def poster_of(access: CommunityAccess) -> Poster:
    principal = access.principal
    if principal.client is not None:
        return Poster(client_id=principal.client.id)
    return Poster(user_id=principal.user.id if principal.user else None)


def _own_member_id(access: CommunityAccess) -> uuid.UUID | None:
    own = access.membership
    return own.id if own is not None and own.status == MemberStatus.active else None


# --- categories ---------------------------------------------------------------------------


async def categories_of(session: AsyncSession, community: Community) -> tuple[list[str], bool]:
    names = list(
        await session.scalars(
            select(Category.name)
            .where(Category.community_id == community.id)
            .order_by(Category.position)
        )
    )
    return (names, True) if names else (list(DEFAULT_CATEGORIES), False)


async def set_categories(
    session: AsyncSession, community: Community, names: Sequence[str]
) -> list[str]:
    # One category per name whatever its case: lookups ignore case, so "Gardening" and
    # "gardening" side by side would be one category with two spellings.
    by_folded: dict[str, str] = {}
    for name in names:
        by_folded.setdefault(name.casefold(), name)
    unique = list(by_folded.values())
    await session.execute(delete(Category).where(Category.community_id == community.id))
    session.add_all(
        Category(community_id=community.id, name=name, position=index)
        for index, name in enumerate(unique)
    )
    await session.flush()
    return unique


async def _require_category(session: AsyncSession, community: Community, name: str) -> str:
    names, _ = await categories_of(session, community)
    by_folded = {n.casefold(): n for n in names}
    if name.casefold() not in by_folded:
        raise errors.UnknownCategory(
            f"{name!r} is not a category here; choose one of: {', '.join(names)}."
        )
    return by_folded[name.casefold()]


# --- listings -----------------------------------------------------------------------------


def _tag_index(tags: Sequence[str]) -> str:
    return "|" + "".join(f"{t}|" for t in tags)


async def _community_member(session: AsyncSession, community: Community, raw_id: str) -> Member:
    member_id = parse_id(raw_id)
    member = await session.get(Member, member_id) if member_id else None
    if member is None or member.community_id != community.id:
        raise errors.PartyNotFound(f"No member {raw_id!r} in this community.")
    return member


async def create_listing(
    session: AsyncSession, access: CommunityAccess, data: ListingCreate
) -> Listing:
    if data.owner_member_id is not None and acts_as_coordinator(access):
        owner = await _community_member(session, access.community, data.owner_member_id)
    else:
        own = access.membership
        if own is None or own.status != MemberStatus.active:
            raise errors.ListingNotEditable("Only active members list offers and requests.")
        if data.owner_member_id is not None and parse_id(data.owner_member_id) != own.id:
            raise errors.ListingNotEditable("Only coordinators list on behalf of someone else.")
        owner = own
    listing = Listing(
        community_id=access.community.id,
        owner_member_id=owner.id,
        type=data.type.value,
        title=data.title,
        description=data.description,
        category=await _require_category(session, access.community, data.category),
        tags=data.tags,
        tag_index=_tag_index(data.tags),
        availability=data.availability,
        status=ListingStatus.open.value,
    )
    session.add(listing)
    await session.flush()
    return listing


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_listings(
    session: AsyncSession,
    community: Community,
    params: PageParams,
    *,
    text: str | None,
    listing_type: str | None,
    category: str | None,
    tag: str | None,
    owner_kind: MemberKind | None,
    owner_member_id: str | None,
    status: ListingStatus | None,
) -> tuple[list[Listing], str | None]:
    stmt = select(Listing).where(Listing.community_id == community.id)
    if status is not None:
        stmt = stmt.where(Listing.status == status.value)
    if listing_type is not None:
        stmt = stmt.where(Listing.type == listing_type)
    if category is not None:
        stmt = stmt.where(func.lower(Listing.category) == category.lower())
    if tag is not None:
        normalised = " ".join(tag.lower().split())
        stmt = stmt.where(Listing.tag_index.like(f"%|{_like_escape(normalised)}|%", escape="\\"))
    for word in (text or "").lower().split():
        # Every word must appear (in the title or the description), in any order.
        pattern = f"%{_like_escape(word)}%"
        stmt = stmt.where(
            or_(
                func.lower(Listing.title).like(pattern, escape="\\"),
                func.lower(Listing.description).like(pattern, escape="\\"),
            )
        )
    if owner_kind is not None:
        stmt = stmt.where(
            Listing.owner_member_id.in_(select(Member.id).where(Member.kind == owner_kind.value))
        )
    if owner_member_id is not None:
        stmt = stmt.where(Listing.owner_member_id == parse_id(owner_member_id))
    return await paginate_by_id(
        session, stmt, Listing.id, params, newest_first=True, row_id=lambda x: x.id
    )


async def update_listing(
    session: AsyncSession, access: CommunityAccess, listing: Listing, data: ListingUpdate
) -> Listing:
    own = access.membership
    if not acts_as_coordinator(access) and (own is None or own.id != listing.owner_member_id):
        raise errors.ListingNotEditable("Only the listing's owner or a coordinator may change it.")
    changes = data.changes()
    if "category" in changes:
        changes["category"] = await _require_category(
            session, access.community, changes["category"]
        )
    if "tags" in changes:
        listing.tag_index = _tag_index(changes["tags"])
    if "status" in changes:
        changes["status"] = changes["status"].value
    for name, value in changes.items():
        setattr(listing, name, value)
    listing.updated_at = utcnow()
    await session.flush()
    return listing


async def listing_reads(session: AsyncSession, listings: Sequence[Listing]) -> list[ListingRead]:
    owner_ids = {x.owner_member_id for x in listings}
    owners = (
        {
            m.id: m
            for m in (await session.scalars(select(Member).where(Member.id.in_(owner_ids)))).all()
        }
        if owner_ids
        else {}
    )
    return [
        ListingRead(
            id=x.id,
            community_id=x.community_id,
            owner_member_id=x.owner_member_id,
            owner_display_name=owners[x.owner_member_id].display_name,
            owner_kind=MemberKind(owners[x.owner_member_id].kind),
            type=x.type,  # type: ignore[arg-type]
            title=x.title,
            description=x.description,
            category=x.category,
            tags=list(x.tags),
            availability=x.availability,
            status=x.status,  # type: ignore[arg-type]
            created_at=x.created_at,
            updated_at=x.updated_at,
        )
        for x in listings
    ]


# --- exchanges: proposing -----------------------------------------------------------------


def _equal_shares(total: int, receivers: int) -> tuple[int, int]:
    """Each receiver's share and what the fund pays: 60 minutes for 7 is 8 each, 4 from the fund."""
    share, remainder = divmod(total, receivers)
    return share, remainder


async def propose_exchange(
    session: AsyncSession, access: CommunityAccess, data: ExchangeCreate
) -> Exchange:
    community = access.community
    coordinator = acts_as_coordinator(access)
    if data.mode == "record" and not coordinator:
        raise errors.CoordinatorRequired("Only coordinators record exchanges directly.")

    today = utcnow().date()
    earliest = today - timedelta(days=community.backdating_window_days)
    if data.occurred_on > today or data.occurred_on < earliest:
        raise errors.OccurredOnOutOfRange(
            f"occurred_on must be between {earliest} and {today} (the community allows "
            f"{community.backdating_window_days} days of back-dating)."
        )

    parties: list[tuple[Member, PartyRole, int]] = []
    seen: set[uuid.UUID] = set()
    provider_total = 0
    for party in data.providers:
        member = await _party(session, community, party.member_id, seen)
        assert party.minutes is not None
        parties.append((member, PartyRole.provider, party.minutes))
        provider_total += party.minutes

    fund_minutes = 0
    if data.split == "equal":
        share, fund_minutes = _equal_shares(provider_total, len(data.receivers))
        if share == 0:
            raise errors.ExchangeUnbalanced("Too many receivers to share these minutes.")
        for party in data.receivers:
            member = await _party(session, community, party.member_id, seen)
            parties.append((member, PartyRole.receiver, share))
    else:
        receiver_total = 0
        for party in data.receivers:
            member = await _party(session, community, party.member_id, seen)
            assert party.minutes is not None
            parties.append((member, PartyRole.receiver, party.minutes))
            receiver_total += party.minutes
        if receiver_total != provider_total:
            raise errors.ExchangeUnbalanced(
                f"Providers give {provider_total} minutes but receivers take {receiver_total}."
            )

    own_id = _own_member_id(access)
    if not coordinator and own_id not in {m.id for m, _, _ in parties}:
        raise errors.ProposerMustBeParty(
            "Propose exchanges you take part in; a coordinator can record others."
        )

    listing_id = None
    if data.listing_id is not None:
        listing_id = parse_id(data.listing_id)
        listing = await session.get(Listing, listing_id) if listing_id else None
        if listing is None or listing.community_id != community.id:
            raise errors.ListingNotFound(f"No listing {data.listing_id!r} in this community.")

    exchange = Exchange(
        community_id=community.id,
        status=ExchangeStatus.proposed.value,
        description=data.description,
        category=await _require_category(session, community, data.category),
        occurred_on=data.occurred_on,
        listing_id=listing_id,
        split=data.split,
        total_minutes=provider_total,
        fund_minutes=fund_minutes,
        proposed_by_member_id=own_id,
        created_by_user_id=access.principal.user.id if access.principal.user else None,
        recorded_by_coordinator=data.mode == "record",
        needs_coordinator=(
            data.mode == "propose"
            and community.confirmation_policy == ConfirmationPolicy.coordinator
        ),
    )
    session.add(exchange)
    await session.flush()
    now = utcnow()
    for member, role, minutes in parties:
        confirmed = member.id == own_id or data.mode == "record"
        session.add(
            ExchangeParty(
                exchange_id=exchange.id,
                member_id=member.id,
                role=role.value,
                minutes=minutes,
                must_confirm=not confirmed,
                confirmed_at=now if confirmed else None,
                confirmed_by_user_id=(
                    access.principal.user.id if confirmed and access.principal.user else None
                ),
            )
        )
    await session.flush()
    action = "record" if data.mode == "record" else "propose"
    _event(session, exchange, access, action, None, ExchangeStatus.proposed, "")
    if data.mode == "record":
        await _post(session, access, exchange)
    return exchange


async def _party(
    session: AsyncSession, community: Community, raw_id: str, seen: set[uuid.UUID]
) -> Member:
    member = await _community_member(session, community, raw_id)
    if member.id in seen:
        raise errors.DuplicateParty(
            f"{member.display_name} appears twice; a member cannot give to or take from themselves."
        )
    if member.status != MemberStatus.active:
        raise errors.PartyNotActive(f"{member.display_name}'s membership is {member.status}.")
    seen.add(member.id)
    return member


def _event(
    session: AsyncSession,
    exchange: Exchange,
    access: CommunityAccess | None,
    action: str,
    from_status: ExchangeStatus | None,
    to_status: ExchangeStatus,
    note: str,
) -> None:
    user = access.principal.user if access else None
    session.add(
        ExchangeEvent(
            exchange_id=exchange.id,
            action=action,
            from_status=from_status.value if from_status else None,
            to_status=to_status.value,
            actor_user_id=user.id if user else None,
            actor_member_id=access.membership.id if access and access.membership else None,
            note=note,
        )
    )


async def _parties(session: AsyncSession, exchange: Exchange) -> list[ExchangeParty]:
    rows = await session.scalars(
        select(ExchangeParty)
        .where(ExchangeParty.exchange_id == exchange.id)
        .order_by(ExchangeParty.id)
    )
    return list(rows)


async def _fund_account(session: AsyncSession, community_id: uuid.UUID) -> Account:
    fund = (await fund_accounts(session, [community_id])).get(community_id)
    if fund is None:  # pragma: no cover - created with the community
        raise errors.FundNotFound("This community has no fund account.")
    return fund


async def _post(session: AsyncSession, access: CommunityAccess | None, exchange: Exchange) -> None:
    """Post the exchange's one transaction: providers earn, receivers (and the fund, for an
    equal split's remainder) spend. A limit refusal raises and the whole request rolls back."""
    # Write the exchange's own changes first: every path then locks the exchange row before the
    # accounts, so two paths over one exchange can never wait on each other in a cycle.
    await session.flush()
    parties = await _parties(session, exchange)
    accounts = dict(
        (
            await session.execute(
                select(Account.member_id, Account.id).where(
                    Account.member_id.in_([p.member_id for p in parties])
                )
            )
        ).all()
    )
    lines = [
        (accounts[p.member_id], p.minutes if p.role == PartyRole.provider else -p.minutes)
        for p in parties
    ]
    if exchange.fund_minutes:
        fund = await _fund_account(session, exchange.community_id)
        lines.append((fund.id, -exchange.fund_minutes))
    community = await session.get(Community, exchange.community_id)
    assert community is not None
    posted = await post_transaction(
        session,
        community,
        PostingRequest(
            kind=TransactionKind.exchange,
            lines=tuple(lines),
            occurred_on=exchange.occurred_on,
            memo=exchange.description[:500],
            details={"exchange_id": str(exchange.id), "category": exchange.category},
        ),
        poster=poster_of(access) if access else Poster(),
    )
    previous = ExchangeStatus(exchange.status)
    exchange.transaction_id = posted.id
    exchange.status = ExchangeStatus.confirmed.value
    exchange.confirmed_at = utcnow()
    exchange.updated_at = utcnow()
    _event(session, exchange, access, "posted", previous, ExchangeStatus.confirmed, "")
    await session.flush()


# --- exchanges: transitions ---------------------------------------------------------------


_POSTED = (ExchangeStatus.confirmed, ExchangeStatus.disputed, ExchangeStatus.resolved)


async def _lock(session: AsyncSession, exchange: Exchange) -> None:
    """Lock the exchange row and re-read it before deciding anything: concurrent confirmations
    of one group exchange then take turns, so the last one sees every other share confirmed
    and posts, and no two of them can post. (SQLite already runs one writer at a time.)"""
    await session.refresh(exchange, with_for_update=True)


def _require_status(exchange: Exchange, *allowed: ExchangeStatus) -> ExchangeStatus:
    current = ExchangeStatus(exchange.status)
    if current not in allowed:
        wanted = " or ".join(s.value for s in allowed)
        raise errors.InvalidTransition(
            f"The exchange is {current.value}; this needs it to be {wanted}."
        )
    return current


async def confirm_exchange(
    session: AsyncSession, access: CommunityAccess, exchange: Exchange, data: ConfirmInput
) -> Exchange:
    await _lock(session, exchange)
    if ExchangeStatus(exchange.status) in _POSTED:
        # A second click after the posting: say what happened rather than "wrong state".
        raise errors.AlreadyConfirmed("This exchange is already confirmed and posted.")
    _require_status(exchange, ExchangeStatus.proposed)
    parties = await _parties(session, exchange)
    own_id = _own_member_id(access)
    own_party = next((p for p in parties if p.member_id == own_id), None)
    coordinator = acts_as_coordinator(access)
    now = utcnow()
    user_id = access.principal.user.id if access.principal.user else None
    on_behalf_of = data.on_behalf_of
    if on_behalf_of is not None and own_id is not None and parse_id(on_behalf_of) == own_id:
        on_behalf_of = None  # naming yourself is confirming your own share
    if on_behalf_of is not None and not coordinator:
        raise errors.CoordinatorRequired("Only coordinators confirm on someone else's behalf.")

    if data.thanks is not None and (
        own_party is None or own_party.role != PartyRole.receiver or on_behalf_of is not None
    ):
        raise errors.ThanksFromReceiversOnly(
            "Only a receiver confirming their own share leaves thanks."
        )

    if own_party is not None and own_party.must_confirm and on_behalf_of is None:
        if own_party.confirmed_at is not None:
            raise errors.AlreadyConfirmed("You have already confirmed this exchange.")
        own_party.confirmed_at = now
        own_party.confirmed_by_user_id = user_id
        own_party.thanks = data.thanks
        if coordinator:
            exchange.needs_coordinator = False
    elif coordinator:
        targets = [p for p in parties if p.must_confirm and p.confirmed_at is None]
        if on_behalf_of is not None:
            wanted = parse_id(on_behalf_of)
            if not any(p.member_id == wanted for p in parties):
                raise errors.PartyNotFound(f"{on_behalf_of!r} is not a party to this exchange.")
            targets = [p for p in targets if p.member_id == wanted]
            if not targets:
                raise errors.AlreadyConfirmed("That party has nothing left to confirm.")
        elif not targets and not exchange.needs_coordinator:
            raise errors.AlreadyConfirmed("Every party has already confirmed.")
        for party in targets:
            party.confirmed_at = now
            party.confirmed_by_user_id = user_id
        if on_behalf_of is None:
            exchange.needs_coordinator = False
    elif own_party is not None and own_party.confirmed_at is not None:
        raise errors.CannotConfirmOwnProposal(
            "You proposed this exchange; the other party confirms it."
        )
    else:
        raise errors.NotAParty("Only the exchange's parties or a coordinator confirm it.")

    _event(
        session,
        exchange,
        access,
        "confirm",
        ExchangeStatus.proposed,
        ExchangeStatus.proposed,
        data.note,
    )
    exchange.updated_at = now
    await session.flush()
    if all(p.confirmed_at is not None for p in parties) and not exchange.needs_coordinator:
        await _post(session, access, exchange)
    return exchange


async def reject_exchange(
    session: AsyncSession, access: CommunityAccess, exchange: Exchange, note: str
) -> Exchange:
    await _lock(session, exchange)
    _require_status(exchange, ExchangeStatus.proposed)
    own_id = _own_member_id(access)
    parties = await _parties(session, exchange)
    counterparty = any(p.member_id == own_id and p.must_confirm for p in parties)
    if not counterparty and not acts_as_coordinator(access):
        if own_id == exchange.proposed_by_member_id:
            raise errors.InvalidTransition("You proposed this exchange: cancel it instead.")
        raise errors.NotAParty("Only the counterparty or a coordinator rejects an exchange.")
    return await _move(session, access, exchange, "reject", ExchangeStatus.rejected, note)


async def cancel_exchange(
    session: AsyncSession, access: CommunityAccess, exchange: Exchange, note: str
) -> Exchange:
    await _lock(session, exchange)
    _require_status(exchange, ExchangeStatus.proposed)
    own_id = _own_member_id(access)
    is_proposer = own_id is not None and own_id == exchange.proposed_by_member_id
    if not is_proposer and not acts_as_coordinator(access):
        raise errors.NotAParty("Only whoever proposed the exchange (or a coordinator) cancels it.")
    return await _move(session, access, exchange, "cancel", ExchangeStatus.cancelled, note)


async def dispute_exchange(
    session: AsyncSession, access: CommunityAccess, exchange: Exchange, note: str
) -> Exchange:
    """Raise a dispute on a posted exchange; on one already disputed, add your side of it."""
    await _lock(session, exchange)
    current = _require_status(exchange, ExchangeStatus.confirmed, ExchangeStatus.disputed)
    own_id = _own_member_id(access)
    is_party = any(p.member_id == own_id for p in await _parties(session, exchange))
    if not is_party and not acts_as_coordinator(access):
        raise errors.NotAParty("Only the exchange's parties or a coordinator dispute it.")
    if current == ExchangeStatus.disputed:
        _event(session, exchange, access, "dispute_reply", current, current, note)
        await session.flush()
        return exchange
    return await _move(session, access, exchange, "dispute", ExchangeStatus.disputed, note)


async def resolve_exchange(
    session: AsyncSession,
    access: CommunityAccess,
    exchange: Exchange,
    outcome: Resolution,
    note: str,
) -> Exchange:
    await _lock(session, exchange)
    if not acts_as_coordinator(access):
        raise errors.CoordinatorRequired("Only coordinators resolve disputes.")
    _require_status(exchange, ExchangeStatus.disputed)
    if outcome == Resolution.reversed:
        exchange.reversal_transaction_id = await _reverse_posting(
            session, access, exchange, f"Dispute resolved by reversal: {note}"[:500]
        )
    exchange.resolution = outcome.value
    return await _move(
        session, access, exchange, f"resolve_{outcome.value}", ExchangeStatus.resolved, note
    )


async def _reverse_posting(
    session: AsyncSession, access: CommunityAccess, exchange: Exchange, memo: str
) -> uuid.UUID:
    """Post the reversal of the exchange's transaction.

    Posted as whoever resolves the dispute: the exchange rules already decided they may (a
    partner client with ``exchanges:write`` resolves disputes without needing ``ledger:write``).
    """
    assert exchange.transaction_id is not None
    original_id = exchange.transaction_id
    if await session.scalar(select(Transaction.id).where(Transaction.reverses_id == original_id)):
        raise AlreadyReversed(f"Transaction {original_id} has already been reversed.")
    lines = (
        await session.execute(
            select(Entry.account_id, Entry.amount)
            .where(Entry.transaction_id == original_id)
            .order_by(Entry.id)
        )
    ).all()
    try:
        posted = await post_transaction(
            session,
            access.community,
            PostingRequest(
                kind=TransactionKind.reversal,
                lines=tuple((account_id, -amount) for account_id, amount in lines),
                occurred_on=utcnow().date(),
                memo=memo,
                details={"reverses": str(original_id), "exchange_id": str(exchange.id)},
                reverses_id=original_id,
            ),
            poster=poster_of(access),
        )
    except IntegrityError as exc:  # a concurrent reversal won the race on the unique index
        raise AlreadyReversed(f"Transaction {original_id} has already been reversed.") from exc
    return posted.id


async def _move(
    session: AsyncSession,
    access: CommunityAccess | None,
    exchange: Exchange,
    action: str,
    to_status: ExchangeStatus,
    note: str,
) -> Exchange:
    previous = ExchangeStatus(exchange.status)
    exchange.status = to_status.value
    exchange.updated_at = utcnow()
    _event(session, exchange, access, action, previous, to_status, note)
    await session.flush()
    return exchange


async def auto_confirm_due(session: AsyncSession, now: datetime | None = None) -> tuple[int, int]:
    """Confirm proposals left unanswered past their community's ``auto_confirm_after_days``.

    Returns (posted, skipped): a proposal whose posting a limit refuses stays proposed.
    """
    now = now or utcnow()
    rows = await session.execute(
        select(Exchange, Community.auto_confirm_after_days)
        .join(Community, Community.id == Exchange.community_id)
        .where(
            Exchange.status == ExchangeStatus.proposed.value,
            # The coordinator confirmation policy is never bypassed by a timer.
            Exchange.needs_coordinator.is_(False),
            Community.auto_confirm_after_days.is_not(None),
        )
        .order_by(Exchange.id)
    )
    posted = skipped = 0
    for exchange, days in rows.all():
        if days is None or exchange.created_at > now - timedelta(days=days):
            continue
        try:
            async with session.begin_nested():
                await _lock(session, exchange)
                if exchange.status != ExchangeStatus.proposed or exchange.needs_coordinator:
                    continue  # answered (or escalated) since the scan
                for party in await _parties(session, exchange):
                    if party.confirmed_at is None:
                        party.confirmed_at = now
                _event(
                    session,
                    exchange,
                    None,
                    "auto_confirm",
                    ExchangeStatus.proposed,
                    ExchangeStatus.proposed,
                    "",
                )
                await _post(session, None, exchange)
            posted += 1
        except LedgerError:
            skipped += 1
    return posted, skipped


# --- exchanges: reading -------------------------------------------------------------------


async def exchange_reads(
    session: AsyncSession, exchanges: Sequence[Exchange]
) -> list[ExchangeRead]:
    ids = [e.id for e in exchanges]
    if not ids:
        return []
    party_rows = await session.execute(
        select(ExchangeParty, Member.display_name, Member.kind)
        .join(Member, Member.id == ExchangeParty.member_id)
        .where(ExchangeParty.exchange_id.in_(ids))
        .order_by(ExchangeParty.id)
    )
    parties: dict[uuid.UUID, list[PartyRead]] = {i: [] for i in ids}
    for party, name, kind in party_rows.all():
        parties[party.exchange_id].append(
            PartyRead(
                member_id=party.member_id,
                display_name=name,
                kind=MemberKind(kind),
                role=PartyRole(party.role),
                minutes=party.minutes,
                must_confirm=party.must_confirm,
                confirmed_at=party.confirmed_at,
                thanks=party.thanks,
            )
        )
    events: dict[uuid.UUID, list[EventRead]] = {i: [] for i in ids}
    for event in await session.scalars(
        select(ExchangeEvent).where(ExchangeEvent.exchange_id.in_(ids)).order_by(ExchangeEvent.id)
    ):
        events[event.exchange_id].append(
            EventRead(
                action=event.action,
                from_status=ExchangeStatus(event.from_status) if event.from_status else None,
                to_status=ExchangeStatus(event.to_status),
                actor_member_id=event.actor_member_id,
                note=event.note,
                created_at=event.created_at,
            )
        )
    return [
        ExchangeRead(
            id=e.id,
            community_id=e.community_id,
            status=ExchangeStatus(e.status),
            resolution=Resolution(e.resolution) if e.resolution else None,
            description=e.description,
            category=e.category,
            occurred_on=e.occurred_on,
            listing_id=e.listing_id,
            split=e.split,  # type: ignore[arg-type]
            total_minutes=e.total_minutes,
            fund_minutes=e.fund_minutes,
            proposed_by_member_id=e.proposed_by_member_id,
            recorded_by_coordinator=e.recorded_by_coordinator,
            needs_coordinator=e.needs_coordinator,
            transaction_id=e.transaction_id,
            reversal_transaction_id=e.reversal_transaction_id,
            confirmed_at=e.confirmed_at,
            created_at=e.created_at,
            parties=parties[e.id],
            events=events[e.id],
        )
        for e in exchanges
    ]


async def list_exchanges(
    session: AsyncSession,
    access: CommunityAccess,
    params: PageParams,
    *,
    status: ExchangeStatus | None,
    member_id: str | None,
) -> tuple[list[Exchange], str | None]:
    """Coordinators (and scoped clients) see every exchange; members see their own."""
    stmt = select(Exchange).where(Exchange.community_id == access.community.id)
    if not acts_as_coordinator(access, "exchanges:read", "exchanges:write"):
        own_id = _own_member_id(access)
        stmt = stmt.where(
            exists().where(
                ExchangeParty.exchange_id == Exchange.id, ExchangeParty.member_id == own_id
            )
        )
    if status is not None:
        stmt = stmt.where(Exchange.status == status.value)
    if member_id is not None:
        stmt = stmt.where(
            exists().where(
                ExchangeParty.exchange_id == Exchange.id,
                ExchangeParty.member_id == parse_id(member_id),
            )
        )
    return await paginate_by_id(
        session, stmt, Exchange.id, params, newest_first=True, row_id=lambda e: e.id
    )


async def can_see_exchange(
    session: AsyncSession, access: CommunityAccess, exchange: Exchange
) -> bool:
    if acts_as_coordinator(access, "exchanges:read", "exchanges:write"):
        return True
    own_id = _own_member_id(access)
    return own_id is not None and any(
        p.member_id == own_id for p in await _parties(session, exchange)
    )


async def pending_for(
    session: AsyncSession, user: User, params: PageParams
) -> tuple[list[PendingItem], str | None]:
    """What awaits this person across their communities: exchanges to confirm, disputes to
    answer, and (for coordinators) confirmations and disputes that need a coordinator."""
    memberships = list(
        await session.scalars(
            select(Member).where(
                Member.user_id == user.id, Member.status == MemberStatus.active.value
            )
        )
    )
    mine = [m.id for m in memberships]
    coordinating = [
        m.community_id
        for m in memberships
        if m.role in (MemberRole.coordinator.value, MemberRole.admin.value)
    ]
    if not mine:
        return [], None
    awaiting_me = exists().where(
        ExchangeParty.exchange_id == Exchange.id,
        ExchangeParty.member_id.in_(mine),
        ExchangeParty.must_confirm.is_(True),
        ExchangeParty.confirmed_at.is_(None),
    )
    my_dispute = exists().where(
        ExchangeParty.exchange_id == Exchange.id, ExchangeParty.member_id.in_(mine)
    )
    condition = or_(
        and_(Exchange.status == ExchangeStatus.proposed.value, awaiting_me),
        and_(Exchange.status == ExchangeStatus.disputed.value, my_dispute),
    )
    if coordinating:
        condition = or_(
            condition,
            and_(
                Exchange.community_id.in_(coordinating),
                or_(
                    Exchange.status == ExchangeStatus.disputed.value,
                    and_(
                        Exchange.status == ExchangeStatus.proposed.value,
                        Exchange.needs_coordinator.is_(True),
                    ),
                ),
            ),
        )
    exchanges, next_cursor = await paginate_by_id(
        session,
        select(Exchange).where(condition),
        Exchange.id,
        params,
        newest_first=True,
        row_id=lambda e: e.id,
    )
    reads = await exchange_reads(session, exchanges)
    items = []
    for read in reads:
        is_coordinator = read.community_id in coordinating
        mine_here = {p.member_id for p in read.parties} & set(mine)
        if read.status == ExchangeStatus.disputed:
            action = "resolve_dispute" if is_coordinator and not mine_here else "answer_dispute"
        elif any(
            p.member_id in mine_here and p.must_confirm and p.confirmed_at is None
            for p in read.parties
        ):
            action = "confirm"
        else:
            action = "coordinator_confirm"
        items.append(PendingItem(action=action, community_id=read.community_id, exchange=read))  # type: ignore[arg-type]
    return items, next_cursor


async def thanks_for(
    session: AsyncSession, member: Member, params: PageParams
) -> tuple[list[ThanksRead], str | None]:
    """Thank-you notes left by people this member helped: the voice of the people served."""
    provided = select(ExchangeParty.exchange_id).where(
        ExchangeParty.member_id == member.id, ExchangeParty.role == PartyRole.provider.value
    )
    standing = select(Exchange.id).where(
        Exchange.transaction_id.is_not(None), Exchange.reversal_transaction_id.is_(None)
    )
    stmt = select(ExchangeParty).where(
        ExchangeParty.exchange_id.in_(provided),
        # A note left on a proposal that was later rejected, or on help reversed in a
        # dispute, would thank someone for help the books say never happened.
        ExchangeParty.exchange_id.in_(standing),
        ExchangeParty.role == PartyRole.receiver.value,
        ExchangeParty.thanks.is_not(None),
    )
    notes, next_cursor = await paginate_by_id(
        session, stmt, ExchangeParty.id, params, newest_first=True, row_id=lambda p: p.id
    )
    if not notes:
        return [], next_cursor
    names = dict(
        (
            await session.execute(
                select(Member.id, Member.display_name).where(
                    Member.id.in_([n.member_id for n in notes])
                )
            )
        ).all()
    )
    dates = dict(
        (
            await session.execute(
                select(Exchange.id, Exchange.occurred_on).where(
                    Exchange.id.in_([n.exchange_id for n in notes])
                )
            )
        ).all()
    )
    return [
        ThanksRead(
            exchange_id=n.exchange_id,
            from_member_id=n.member_id,
            from_display_name=names[n.member_id],
            thanks=n.thanks or "",
            occurred_on=dates[n.exchange_id],
        )
        for n in notes
    ], next_cursor


# --- the community fund -------------------------------------------------------------------


async def donate(
    session: AsyncSession, access: CommunityAccess, data: DonationCreate
) -> PostedTransaction:
    community = access.community
    if data.member_id is not None and acts_as_coordinator(access):
        donor = await _community_member(session, community, data.member_id)
    else:
        own_id = _own_member_id(access)
        if own_id is None or (data.member_id is not None and parse_id(data.member_id) != own_id):
            raise errors.CoordinatorRequired(
                "Members donate their own hours; coordinators may donate for others."
            )
        donor = await _community_member(session, community, str(own_id))
    if donor.status != MemberStatus.active:
        raise errors.PartyNotActive(f"{donor.display_name}'s membership is {donor.status}.")
    donor_account = await ledger_service.member_account(session, donor.id)
    fund = await _fund_account(session, community.id)
    return await post_transaction(
        session,
        community,
        PostingRequest(
            kind=TransactionKind.donation,
            lines=((donor_account.id, -data.minutes), (fund.id, data.minutes)),
            occurred_on=utcnow().date(),
            memo=data.note or f"Donation from {donor.display_name}",
            details={"member_id": str(donor.id)},
        ),
        poster=poster_of(access),
    )


async def grant(
    session: AsyncSession, access: CommunityAccess, data: GrantCreate
) -> PostedTransaction:
    if not acts_as_coordinator(access):
        raise errors.CoordinatorRequired("Only coordinators grant hours from the fund.")
    community = access.community
    recipient = await _community_member(session, community, data.member_id)
    if recipient.status != MemberStatus.active:
        raise errors.PartyNotActive(f"{recipient.display_name}'s membership is {recipient.status}.")
    recipient_account = await ledger_service.member_account(session, recipient.id)
    fund = await _fund_account(session, community.id)
    return await post_transaction(
        session,
        community,
        PostingRequest(
            kind=TransactionKind.grant,
            lines=((fund.id, -data.minutes), (recipient_account.id, data.minutes)),
            occurred_on=utcnow().date(),
            memo=data.reason,
            details={"member_id": str(recipient.id), "reason": data.reason},
        ),
        poster=poster_of(access),
    )


async def fund_account(session: AsyncSession, community: Community) -> Account:
    return await _fund_account(session, community.id)

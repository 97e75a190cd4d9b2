"""Load-and-authorise dependencies for listings and exchanges.

Listings are visible to every active member of the community (they are its assets register).
An exchange is visible to its parties, coordinators and scoped partner clients; to anyone else
it does not exist (404).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.access.community import CommunityAccess, NotAMember, authorise
from app.access.errors import CommunityNotFound
from app.access.principal import CurrentPrincipal
from app.core.database import DbSession
from app.core.ids import parse_id
from app.exchanges import errors, service
from app.models import Community, Exchange, Listing
from app.models.identity import MemberRole


@dataclass(frozen=True)
class ListingAccess:
    listing: Listing
    access: CommunityAccess


@dataclass(frozen=True)
class ExchangeAccess:
    exchange: Exchange
    access: CommunityAccess


def listing_guard(client_scope: str) -> Callable[..., Awaitable[ListingAccess]]:
    async def guard(
        listing_id: str, session: DbSession, principal: CurrentPrincipal
    ) -> ListingAccess:
        parsed = parse_id(listing_id)
        listing = await session.get(Listing, parsed) if parsed else None
        if listing is None:
            raise errors.ListingNotFound(f"No listing has id {listing_id!r}.")
        community = await session.get(Community, listing.community_id)
        assert community is not None
        try:
            access = await authorise(
                session, community, principal, role=MemberRole.member, client_scope=client_scope
            )
        except (NotAMember, CommunityNotFound) as exc:
            raise errors.ListingNotFound(f"No listing has id {listing_id!r}.") from exc
        return ListingAccess(listing=listing, access=access)

    return guard


def exchange_guard(client_scope: str) -> Callable[..., Awaitable[ExchangeAccess]]:
    async def guard(
        exchange_id: str, session: DbSession, principal: CurrentPrincipal
    ) -> ExchangeAccess:
        parsed = parse_id(exchange_id)
        exchange = await session.get(Exchange, parsed) if parsed else None
        missing = errors.ExchangeNotFound(f"No exchange has id {exchange_id!r}.")
        if exchange is None:
            raise missing
        community = await session.get(Community, exchange.community_id)
        assert community is not None
        try:
            access = await authorise(
                session, community, principal, role=MemberRole.member, client_scope=client_scope
            )
        except (NotAMember, CommunityNotFound) as exc:
            raise missing from exc
        if not await service.can_see_exchange(session, access, exchange):
            raise missing
        return ExchangeAccess(exchange=exchange, access=access)

    return guard

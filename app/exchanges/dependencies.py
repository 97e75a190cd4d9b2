"""Load-and-authorise dependencies for listings and exchanges.

Listings are visible to every active member of the community (they are its assets register).
An exchange is visible to its parties, coordinators and scoped partner clients; to anyone else
it does not exist (404).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.access.community import CommunityAccess, authorise_or_hide
from app.access.principal import CurrentPrincipal
from app.core.database import DbSession
from app.core.ids import parse_id
from app.exchanges import errors, service
from app.models import Exchange, Listing
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
        access = await authorise_or_hide(
            session,
            listing.community_id,
            principal,
            role=MemberRole.member,
            client_scope=client_scope,
            missing=errors.ListingNotFound(f"No listing has id {listing_id!r}."),
        )
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
        access = await authorise_or_hide(
            session,
            exchange.community_id,
            principal,
            role=MemberRole.member,
            client_scope=client_scope,
            missing=missing,
        )
        if not await service.can_see_exchange(session, access, exchange):
            raise missing
        return ExchangeAccess(exchange=exchange, access=access)

    return guard

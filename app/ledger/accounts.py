"""Opening accounts (identity calls this when a member joins or a community is created) and
finding a community's fund."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Account, Community, Member
from app.models.ledger import AccountKind

# The fund may not be overdrawn: grants spend what donations brought in. Its cap is large
# because it is the community's reserve, not a person's.
FUND_MIN_BALANCE = 0
FUND_MAX_BALANCE = 10_000_000 * 60


async def open_member_account(
    session: AsyncSession, community: Community, member: Member
) -> Account:
    account = Account(
        community_id=community.id,
        member_id=member.id,
        kind=AccountKind.member.value,
        name=member.display_name,
    )
    session.add(account)
    await session.flush()
    return account


async def fund_accounts(
    session: AsyncSession, community_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, Account]:
    """Each community's fund account, for any number of communities in one query."""
    ids = list(community_ids)
    if not ids:
        return {}
    rows = await session.scalars(
        select(Account).where(Account.community_id.in_(ids), Account.kind == AccountKind.fund.value)
    )
    return {account.community_id: account for account in rows}


async def open_fund_account(session: AsyncSession, community: Community) -> Account:
    account = Account(
        community_id=community.id,
        member_id=None,
        kind=AccountKind.fund.value,
        name=f"{community.name} community fund",
        min_balance=FUND_MIN_BALANCE,
        max_balance=FUND_MAX_BALANCE,
    )
    session.add(account)
    await session.flush()
    return account

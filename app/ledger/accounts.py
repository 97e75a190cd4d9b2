"""Opening accounts. Identity calls this when a member joins or a community is created."""

from __future__ import annotations

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

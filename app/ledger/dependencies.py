"""Load-and-authorise dependencies for ledger resources.

An account is visible to its own member, to coordinators and admins of its community, and to
partner clients with ``ledger:read``. Outside the community an id reveals nothing (404); a
fellow member of the community is told the role it lacks (403 ``insufficient_role``), since the
community's membership is no secret to its members.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select

from app.access.community import CommunityAccess, NotAMember, authorise, authorise_or_hide
from app.access.errors import CommunityNotFound
from app.access.principal import CurrentPrincipal
from app.core.database import DbSession
from app.core.ids import parse_id
from app.ledger import errors
from app.models import Account, Community, Entry, Member, Transaction
from app.models.identity import MemberRole


@dataclass(frozen=True)
class AccountAccess:
    account: Account
    access: CommunityAccess
    is_owner: bool


def account_guard(
    role: MemberRole, client_scope: str | None, *, allow_owner: bool
) -> Callable[..., Awaitable[AccountAccess]]:
    async def guard(
        account_id: str, session: DbSession, principal: CurrentPrincipal
    ) -> AccountAccess:
        parsed = parse_id(account_id)
        account = await session.get(Account, parsed) if parsed else None
        if account is None:
            raise errors.AccountNotFound(f"No account has id {account_id!r}.")
        community = await session.get(Community, account.community_id)
        assert community is not None
        if allow_owner and principal.user is not None and account.member_id is not None:
            owner = await session.get(Member, account.member_id)
            if owner is not None and owner.user_id == principal.user.id:
                access = CommunityAccess(community=community, principal=principal, membership=owner)
                return AccountAccess(account=account, access=access, is_owner=True)
        try:
            access = await authorise(
                session, community, principal, role=role, client_scope=client_scope
            )
        except (NotAMember, CommunityNotFound) as exc:
            raise errors.AccountNotFound(f"No account has id {account_id!r}.") from exc
        return AccountAccess(account=account, access=access, is_owner=False)

    return guard


@dataclass(frozen=True)
class TransactionAccess:
    transaction: Transaction
    access: CommunityAccess


def transaction_guard(
    role: MemberRole, client_scope: str
) -> Callable[..., Awaitable[TransactionAccess]]:
    """Coordinators (or scoped clients) see every transaction of their community; a member
    sees the transactions that touched their own account."""

    async def guard(
        transaction_id: str, session: DbSession, principal: CurrentPrincipal
    ) -> TransactionAccess:
        parsed = parse_id(transaction_id)
        transaction = await session.get(Transaction, parsed) if parsed else None
        missing = errors.TransactionNotFound(f"No transaction has id {transaction_id!r}.")
        if transaction is None:
            raise missing
        access = await authorise_or_hide(
            session,
            transaction.community_id,
            principal,
            role=MemberRole.member,
            client_scope=client_scope,
            missing=missing,
        )
        if access.has_role(role) or access.is_client:
            return TransactionAccess(transaction=transaction, access=access)
        own = access.membership
        touched = await session.scalar(
            select(Entry.id)
            .join(Account, Account.id == Entry.account_id)
            .where(
                Entry.transaction_id == transaction.id,
                Account.member_id == (own.id if own else None),
            )
            .limit(1)
        )
        if touched is None:
            raise missing
        return TransactionAccess(transaction=transaction, access=access)

    return guard

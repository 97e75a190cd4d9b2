"""Per-community authorisation as dependencies.

Each guard loads the resource and decides in one step, so a handler's signature states its
precondition: ``access: CommunityCoordinator`` means "the caller coordinates this community".
Ids of rows in communities the caller cannot see answer 404, never 403, so guessing ids
reveals nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.errors import (
    CommunityNotFound,
    InsufficientRole,
    InsufficientScope,
    MemberNotFound,
    MembershipInactive,
)
from app.access.principal import CurrentPrincipal, Principal
from app.core.database import DbSession
from app.core.errors import DomainError, Forbidden
from app.core.ids import parse_id
from app.models import Community, Member
from app.models.identity import ROLE_RANK, MemberRole, MemberStatus


class NotAMember(Forbidden):
    code = "not_a_member"
    title = "You are not a member of this community"


@dataclass(frozen=True)
class CommunityAccess:
    """The community being acted on and what the caller is to it."""

    community: Community
    principal: Principal
    membership: Member | None  # the caller's own membership, when a user has one

    @property
    def is_platform_admin(self) -> bool:
        return self.principal.is_platform_admin

    @property
    def is_client(self) -> bool:
        return self.principal.client is not None

    def has_role(self, role: MemberRole) -> bool:
        if self.is_platform_admin:
            return True
        m = self.membership
        if m is None or m.status != MemberStatus.active:
            return False
        return ROLE_RANK[MemberRole(m.role)] >= ROLE_RANK[role]

    @property
    def acting_member_id(self) -> uuid.UUID | None:
        return self.membership.id if self.membership is not None else None


def community_not_found(raw_id: str) -> CommunityNotFound:
    return CommunityNotFound(f"No community has id {raw_id!r}.")


def client_of_another_community(community_id: uuid.UUID) -> CommunityNotFound:
    return CommunityNotFound(f"No community has id '{community_id}'.")


def scope_needed(client_scope: str | None) -> InsufficientScope:
    return InsufficientScope(f"This route needs {client_scope or 'a signed-in user'}.")


def not_a_member(slug: str) -> NotAMember:
    return NotAMember(f"You are not a member of community '{slug}'.")


def membership_inactive(slug: str, status: str) -> MembershipInactive:
    return MembershipInactive(f"Your membership of '{slug}' is {status}.")


@dataclass(frozen=True)
class CommunityRef:
    """A community named in the path, not yet looked up: its id, and the id as written."""

    id: uuid.UUID
    as_written: str


async def community_in_path(community_id: str) -> CommunityRef:
    """Parsed inline (async): FastAPI would run a plain function on a worker thread."""
    parsed = parse_id(community_id)
    if parsed is None:
        raise community_not_found(community_id)
    return CommunityRef(id=parsed, as_written=community_id)


CommunityInPath = Annotated[CommunityRef, Depends(community_in_path)]


async def load_community(session: AsyncSession, raw_id: str) -> Community:
    community_id = parse_id(raw_id)
    community = await session.get(Community, community_id) if community_id else None
    if community is None:
        raise community_not_found(raw_id)
    return community


# Built once: every community route runs it, so it skips per-request construction.
_COMMUNITY_WITH_MEMBERSHIP = (
    select(Community, Member)
    .outerjoin(
        Member,
        and_(Member.community_id == Community.id, Member.user_id == bindparam("user_id")),
    )
    .where(Community.id == bindparam("community_id"))
)


async def load_community_with_membership(
    session: AsyncSession, raw_id: str, principal: Principal
) -> tuple[Community, Member | None]:
    """The community and the caller's membership of it, in one round trip."""
    community_id = parse_id(raw_id)
    if community_id is None or principal.user is None:
        return await load_community(session, raw_id), None
    row = (
        await session.execute(
            _COMMUNITY_WITH_MEMBERSHIP, {"community_id": community_id, "user_id": principal.user.id}
        )
    ).first()
    if row is None:
        raise community_not_found(raw_id)
    return row[0], row[1]


_UNLOADED: Any = object()


async def _membership(
    session: AsyncSession, community: Community, principal: Principal
) -> Member | None:
    if principal.user is None:
        return None
    return await session.scalar(
        select(Member).where(
            Member.community_id == community.id, Member.user_id == principal.user.id
        )
    )


async def authorise(
    session: AsyncSession,
    community: Community,
    principal: Principal,
    *,
    role: MemberRole | None,
    client_scope: str | None,
    membership: Member | None = _UNLOADED,
) -> CommunityAccess:
    """Decide whether ``principal`` may act in ``community`` with at least ``role``.

    ``role=None`` means any signed-in user may (the public profile); ``client_scope=None``
    means partner clients may not use the route at all.
    """
    if principal.client is not None:
        if principal.client.community_id != community.id:
            raise client_of_another_community(community.id)
        if client_scope is None or not principal.has_scope(client_scope):
            raise scope_needed(client_scope)
        return CommunityAccess(community=community, principal=principal, membership=None)

    if membership is _UNLOADED:
        membership = await _membership(session, community, principal)
    access = CommunityAccess(community=community, principal=principal, membership=membership)
    if role is None or principal.is_platform_admin:
        return access
    if membership is None:
        raise not_a_member(community.slug)
    if membership.status != MemberStatus.active:
        raise membership_inactive(community.slug, membership.status)
    if not access.has_role(role):
        raise InsufficientRole(
            f"This needs the {role} role in '{community.slug}'; you are a {membership.role}."
        )
    return access


async def authorise_or_hide(
    session: AsyncSession,
    community_id: uuid.UUID,
    principal: Principal,
    *,
    role: MemberRole | None,
    client_scope: str | None,
    missing: DomainError,
) -> CommunityAccess:
    """Authorise against the community a row belongs to; to anyone outside that community the
    row does not exist (``missing``, a 404), so guessed ids reveal nothing."""
    community = await session.get(Community, community_id)
    assert community is not None  # rows reference their community by foreign key
    try:
        return await authorise(session, community, principal, role=role, client_scope=client_scope)
    except (NotAMember, CommunityNotFound) as exc:
        raise missing from exc


CommunityGuard = Callable[[str, AsyncSession, Principal], Awaitable[CommunityAccess]]


def community_guard(
    role: MemberRole | None, client_scope: str | None
) -> Callable[..., Awaitable[CommunityAccess]]:
    async def guard(
        community_id: str, session: DbSession, principal: CurrentPrincipal
    ) -> CommunityAccess:
        community, membership = await load_community_with_membership(
            session, community_id, principal
        )
        return await authorise(
            session,
            community,
            principal,
            role=role,
            client_scope=client_scope,
            membership=membership,
        )

    return guard


@dataclass(frozen=True)
class MemberAccess:
    member: Member
    access: CommunityAccess

    @property
    def is_self(self) -> bool:
        own = self.access.membership
        return own is not None and own.id == self.member.id


def member_guard(
    role: MemberRole, client_scope: str | None, *, allow_self: bool = False
) -> Callable[..., Awaitable[MemberAccess]]:
    """Load ``{member_id}`` and authorise against its community.

    With ``allow_self``, the member themself passes whatever their role or status.
    """

    async def guard(
        member_id: str, session: DbSession, principal: CurrentPrincipal
    ) -> MemberAccess:
        parsed = parse_id(member_id)
        member = await session.get(Member, parsed) if parsed else None
        if member is None:
            raise MemberNotFound(f"No member has id {member_id!r}.")
        community = await session.get(Community, member.community_id)
        assert community is not None
        if allow_self and principal.user is not None and member.user_id == principal.user.id:
            access = CommunityAccess(community=community, principal=principal, membership=member)
            return MemberAccess(member=member, access=access)
        try:
            access = await authorise(
                session, community, principal, role=role, client_scope=client_scope
            )
        except (NotAMember, CommunityNotFound) as exc:
            # Someone outside the community learns nothing about its members.
            raise MemberNotFound(f"No member has id {member_id!r}.") from exc
        return MemberAccess(member=member, access=access)

    return guard

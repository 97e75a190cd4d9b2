"""Users, communities and memberships: the rules of who belongs where and with what role."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.community import CommunityAccess, MemberAccess
from app.access.errors import InsufficientRole
from app.access.principal import Principal
from app.core.clock import utcnow
from app.core.errors import Forbidden
from app.core.pagination import PageParams, paginate_by_id
from app.core.security import PasswordService
from app.identity import errors
from app.identity.schemas import (
    CommunityCreate,
    CommunityRead,
    MemberCreate,
    MemberRead,
    MembershipSummary,
    MemberUpdate,
    UserCreate,
)
from app.ledger.accounts import fund_accounts, open_fund_account, open_member_account
from app.models import Account, Community, Member, User
from app.models.identity import ROLE_RANK, MemberKind, MemberRole, MemberStatus


def _plain(value: object) -> object:
    """Enum members are stored as their string values."""
    return value.value if isinstance(value, enum.Enum) else value


# --- users ------------------------------------------------------------------------------


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == email.lower()))


async def create_user(
    session: AsyncSession,
    passwords: PasswordService,
    email: str,
    password: str | None,
    *,
    is_platform_admin: bool = False,
) -> User:
    if await find_user_by_email(session, email) is not None:
        raise errors.EmailTaken(f"{email} is already registered.")
    user = User(
        email=email.lower(),
        password_hash=passwords.hash(password) if password else None,
        is_platform_admin=is_platform_admin,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent sign-up with the same email
        raise errors.EmailTaken(f"{email} is already registered.") from exc
    return user


async def register_user(
    session: AsyncSession, passwords: PasswordService, data: UserCreate, *, signup_allowed: bool
) -> User:
    if not signup_allowed:
        raise errors.SignupDisabled("Ask a coordinator or platform admin for an account.")
    return await create_user(session, passwords, data.email, data.password)


async def memberships_of(session: AsyncSession, user: User) -> list[MembershipSummary]:
    rows = await session.execute(
        select(Member, Community)
        .join(Community, Community.id == Member.community_id)
        .where(Member.user_id == user.id)
        .order_by(Community.slug)
    )
    return [
        MembershipSummary(
            member_id=member.id,
            community_id=community.id,
            community_slug=community.slug,
            community_name=community.name,
            display_name=member.display_name,
            kind=MemberKind(member.kind),
            role=MemberRole(member.role),
            status=MemberStatus(member.status),
        )
        for member, community in rows
    ]


# --- communities ------------------------------------------------------------------------


async def create_community(
    session: AsyncSession, creator: User, data: CommunityCreate
) -> Community:
    if await session.scalar(select(Community.id).where(Community.slug == data.slug)) is not None:
        raise errors.SlugTaken(f"The slug {data.slug!r} is taken.")
    community = Community(**data.model_dump(exclude={"creator_member"}))
    session.add(community)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise errors.SlugTaken(f"The slug {data.slug!r} is taken.") from exc
    await open_fund_account(session, community)
    if data.creator_member is not None:
        founder = Member(
            community_id=community.id,
            user_id=creator.id,
            display_name=data.creator_member.display_name,
            kind=data.creator_member.kind.value,
            role=MemberRole.admin.value,
            status=MemberStatus.active.value,
            joined_at=utcnow(),
            skills=[],
            needs=[],
        )
        session.add(founder)
        await session.flush()
        await open_member_account(session, community, founder)
    return community


async def community_reads(
    session: AsyncSession, communities: Sequence[Community]
) -> list[CommunityRead]:
    """Read models with each community's fund account id (one query for the whole page)."""
    funds = await fund_accounts(session, (c.id for c in communities))
    reads = []
    for community in communities:
        read = CommunityRead.model_validate(community)
        fund = funds.get(community.id)
        read.fund_account_id = fund.id if fund else None
        reads.append(read)
    return reads


async def community_read(session: AsyncSession, community: Community) -> CommunityRead:
    return (await community_reads(session, [community]))[0]


async def list_communities(
    session: AsyncSession, principal: Principal, params: PageParams
) -> tuple[list[Community], str | None]:
    """The directory: every community, so people can find one to join. A partner client sees
    only its own."""
    stmt = select(Community)
    if principal.client is not None:
        stmt = stmt.where(Community.id == principal.client.community_id)
    return await paginate_by_id(session, stmt, Community.id, params, row_id=lambda c: c.id)


async def update_community(
    session: AsyncSession, community: Community, changes: dict[str, object]
) -> Community:
    # The schema's ranges (min <= 0 <= max) keep the limits ordered whatever is changed.
    now = utcnow()
    limits = ("default_min_balance", "default_max_balance")
    if any(name in changes and changes[name] != getattr(community, name) for name in limits):
        community.limits_changed_at = now
    for name, value in changes.items():
        setattr(community, name, _plain(value))
    community.updated_at = now
    await session.flush()
    return community


# --- members ----------------------------------------------------------------------------


async def add_member(session: AsyncSession, access: CommunityAccess, data: MemberCreate) -> Member:
    """Coordinators add members directly (active); anyone else asks to join (pending)."""
    community = access.community
    principal = access.principal
    acts_as_coordinator = access.has_role(MemberRole.coordinator) or (
        principal.client is not None and principal.has_scope("members:write")
    )

    if acts_as_coordinator:
        if ROLE_RANK[data.role] > ROLE_RANK[MemberRole.member] and not access.has_role(
            MemberRole.admin
        ):
            raise errors.RoleChangeNotAllowed(f"Only admins may add a {data.role}.")
        linked_user_id: uuid.UUID | None = None
        if data.user_email is not None:
            user = await find_user_by_email(session, data.user_email)
            if user is None:
                raise errors.UserNotFound(f"No user is registered as {data.user_email}.")
            linked_user_id = user.id
        status = MemberStatus.active
    else:
        if principal.user is None:  # pragma: no cover - guards let only users and scoped clients in
            raise Forbidden("Only signed-in people may ask to join.")
        if data.role != MemberRole.member or data.user_email is not None:
            raise errors.RoleChangeNotAllowed(
                "A request to join cannot choose a role or link another login."
            )
        linked_user_id = principal.user.id
        status = MemberStatus.pending

    if linked_user_id is not None:
        existing = await session.scalar(
            select(Member.id).where(
                Member.community_id == community.id, Member.user_id == linked_user_id
            )
        )
        if existing is not None:
            raise errors.AlreadyMember(f"That login already has membership {existing} here.")

    member = Member(
        community_id=community.id,
        user_id=linked_user_id,
        display_name=data.display_name,
        kind=data.kind.value,
        role=data.role.value,
        status=status.value,
        bio=data.bio,
        skills=data.skills,
        needs=data.needs,
        joined_at=utcnow() if status == MemberStatus.active else None,
    )
    session.add(member)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise errors.AlreadyMember("That login is already a member here.") from exc
    await open_member_account(session, community, member)
    return member


async def list_members(
    session: AsyncSession,
    community: Community,
    params: PageParams,
    *,
    status: MemberStatus | None,
    kind: MemberKind | None,
    role: MemberRole | None,
) -> tuple[list[Member], str | None]:
    stmt = select(Member).where(Member.community_id == community.id)
    if status is not None:
        stmt = stmt.where(Member.status == status.value)
    if kind is not None:
        stmt = stmt.where(Member.kind == kind.value)
    if role is not None:
        stmt = stmt.where(Member.role == role.value)
    return await paginate_by_id(session, stmt, Member.id, params, row_id=lambda m: m.id)


# Who may move a membership from one status to another. Members themselves may only leave.
_COORDINATOR_TRANSITIONS = {
    (MemberStatus.pending, MemberStatus.active),  # approve a request to join
    (MemberStatus.pending, MemberStatus.left),  # decline it
    (MemberStatus.active, MemberStatus.suspended),
    (MemberStatus.suspended, MemberStatus.active),
    (MemberStatus.active, MemberStatus.left),
    (MemberStatus.suspended, MemberStatus.left),
    (MemberStatus.left, MemberStatus.active),  # welcome back
}
_SELF_TRANSITIONS = {
    (MemberStatus.active, MemberStatus.left),
    (MemberStatus.pending, MemberStatus.left),
}
_SELF_EDITABLE = {"display_name", "bio", "skills", "needs"}


async def update_member(session: AsyncSession, target: MemberAccess, data: MemberUpdate) -> Member:
    member = target.member
    access = target.access
    changes = data.changes()
    is_coordinator = access.has_role(MemberRole.coordinator) or (
        access.principal.client is not None and access.principal.has_scope("members:write")
    )

    if (
        not target.is_self
        and not access.has_role(MemberRole.admin)
        and ROLE_RANK[MemberRole(member.role)] >= ROLE_RANK[MemberRole.coordinator]
    ):
        # Suspending or editing a peer or a superior would be a role change in disguise.
        raise InsufficientRole("Only admins change a coordinator's or an admin's membership.")

    if not is_coordinator:
        forbidden = set(changes) - _SELF_EDITABLE - {"status"}
        if forbidden:
            raise errors.FieldNotEditable(
                f"Only coordinators may change {', '.join(sorted(forbidden))}."
            )

    if "role" in changes and changes["role"] != MemberRole(member.role):
        if not access.has_role(MemberRole.admin):
            raise errors.RoleChangeNotAllowed("Only community admins change roles.")
        await _keep_an_admin(session, member, new_role=changes["role"], new_status=None)

    if "status" in changes and changes["status"] != MemberStatus(member.status):
        move = (MemberStatus(member.status), changes["status"])
        allowed = _COORDINATOR_TRANSITIONS if is_coordinator else _SELF_TRANSITIONS
        if not target.is_self and not is_coordinator:  # pragma: no cover - guard forbids it
            raise Forbidden("Only coordinators change another member's status.")
        if move not in allowed:
            raise errors.InvalidStatusChange(
                f"A membership cannot go from {move[0]} to {move[1]} here."
            )
        await _keep_an_admin(session, member, new_role=None, new_status=changes["status"])
        if move[1] == MemberStatus.active and member.joined_at is None:
            member.joined_at = utcnow()

    for name, value in changes.items():
        setattr(member, name, _plain(value))
    member.updated_at = utcnow()
    await session.flush()
    return member


async def _keep_an_admin(
    session: AsyncSession,
    member: Member,
    *,
    new_role: MemberRole | None,
    new_status: MemberStatus | None,
) -> None:
    """Refuse a change that would leave the community without an active admin."""
    is_active_admin = member.role == MemberRole.admin and member.status == MemberStatus.active
    stays = (new_role in (None, MemberRole.admin)) and (new_status in (None, MemberStatus.active))
    if not is_active_admin or stays:
        return
    # Two admins stepping down at once must not both see the other as the one who stays:
    # serialise admin removals per community on its row (SQLite serialises every writer).
    await session.execute(
        select(Community.id).where(Community.id == member.community_id).with_for_update()
    )
    others = await session.scalar(
        select(func.count())
        .select_from(Member)
        .where(
            Member.community_id == member.community_id,
            Member.role == MemberRole.admin.value,
            Member.status == MemberStatus.active.value,
            Member.id != member.id,
        )
    )
    if not others:
        raise errors.LastAdmin("Make someone else an admin first.")


async def member_reads(session: AsyncSession, members: Sequence[Member]) -> list[MemberRead]:
    """Read models with each member's account id (one query for the whole page)."""
    ids = [m.id for m in members]
    accounts: dict[uuid.UUID, uuid.UUID] = {}
    if ids:
        rows = await session.execute(
            select(Account.member_id, Account.id).where(Account.member_id.in_(ids))
        )
        accounts = {member_id: account_id for member_id, account_id in rows if member_id}
    reads = []
    for m in members:
        read = _member_read(m)
        read.account_id = accounts.get(m.id)
        reads.append(read)
    return reads


def _member_read(member: Member) -> MemberRead:
    return MemberRead(
        id=member.id,
        community_id=member.community_id,
        display_name=member.display_name,
        kind=MemberKind(member.kind),
        role=MemberRole(member.role),
        status=MemberStatus(member.status),
        has_login=member.user_id is not None,
        bio=member.bio,
        skills=list(member.skills),
        needs=list(member.needs),
        joined_at=member.joined_at,
        created_at=member.created_at,
    )

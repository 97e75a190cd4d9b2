"""Work the CLI does against the database, outside any HTTP request."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.community import CommunityAccess
from app.access.principal import Principal
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.database import create_engine, create_sessionmaker
from app.core.security import PasswordService
from app.exchanges import service as exchanges_service
from app.exchanges.schemas import (
    DonationCreate,
    ExchangeCreate,
    GrantCreate,
    ListingCreate,
    PartyInput,
)
from app.identity import service
from app.identity.schemas import CommunityCreate, CreatorMembership
from app.ledger.accounts import open_member_account
from app.ledger.idempotency import purge_expired
from app.models import Community, Member, ReconciliationRun, User
from app.models.exchanges import ListingType
from app.models.identity import MemberKind, MemberRole, MemberStatus
from app.reconciliation import service as reconciliation_service


async def create_platform_admin(
    settings: Settings, email: str, password: str
) -> tuple[uuid.UUID, bool]:
    """Create a platform admin, or promote the user with that email (and set their password,
    which makes this the way back in for an operator who lost it). Returns the user id and
    whether the user was created."""
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            passwords = PasswordService(settings)
            user = await service.find_user_by_email(session, email)
            if user is None:
                user = await service.create_user(
                    session, passwords, email, password, is_platform_admin=True
                )
                return user.id, True
            user.is_platform_admin = True
            user.password_hash = passwords.hash(password)
            return user.id, False
    finally:
        await engine.dispose()


DEMO_SLUG = "riverside"
DEMO_PEOPLE: list[tuple[str, MemberKind, MemberRole, list[str], list[str]]] = [
    (
        "Maggie (coordinator)",
        MemberKind.professional,
        MemberRole.coordinator,
        ["organising"],
        ["it help"],
    ),
    (
        "Dr Amina Okafor (GP)",
        MemberKind.professional,
        MemberRole.member,
        ["first aid"],
        ["gardening"],
    ),
    (
        "Tom Reilly (practice nurse)",
        MemberKind.professional,
        MemberRole.member,
        ["health and wellbeing"],
        ["transport"],
    ),
    ("Joan Price", MemberKind.citizen, MemberRole.member, ["gardening", "baking"], ["shopping"]),
    (
        "Dev Sharma",
        MemberKind.citizen,
        MemberRole.member,
        ["it help", "teaching"],
        ["companionship"],
    ),
    ("Ellie Brooks", MemberKind.citizen, MemberRole.member, ["companionship"], ["household"]),
    (
        "Kwame Mensah",
        MemberKind.citizen,
        MemberRole.member,
        ["transport", "household"],
        ["teaching"],
    ),
    ("Rosa Lima", MemberKind.citizen, MemberRole.member, ["creative"], ["gardening"]),
    (
        "Riverside Library",
        MemberKind.organization,
        MemberRole.member,
        ["admin/office"],
        ["teaching"],
    ),
]


async def seed_demo(settings: Settings, *, password: str) -> str:
    """A small community so a newcomer sees data at once. Safe to run twice."""
    engine = create_engine(settings)
    passwords = PasswordService(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            if await session.scalar(select(Community.id).where(Community.slug == DEMO_SLUG)):
                return f"demo community '{DEMO_SLUG}' already exists"
            admin_email = "admin@riverside.example"
            admin = await service.find_user_by_email(session, admin_email)
            if admin is None:
                admin = await service.create_user(
                    session, passwords, admin_email, password, is_platform_admin=True
                )
            community = await service.create_community(
                session,
                admin,
                CommunityCreate(
                    slug=DEMO_SLUG,
                    name="Riverside Time Bank",
                    description="Neighbours, the GP practice and the library trading hours.",
                    timezone="Europe/London",
                    creator_member=CreatorMembership(
                        display_name="Riverside admin", kind=MemberKind.professional
                    ),
                ),
            )
            logins = [admin_email]
            members: list[Member] = []
            for index, (name, kind, role, skills, needs) in enumerate(DEMO_PEOPLE):
                user_id = None
                if index < 6:  # the rest have no login: a coordinator acts for them
                    first_name = next(w for w in name.split() if w not in ("Dr", "Mr", "Ms"))
                    email = f"{first_name.lower()}@riverside.example"
                    user = await service.create_user(session, passwords, email, password)
                    user_id = user.id
                    logins.append(email)
                member = Member(
                    community_id=community.id,
                    user_id=user_id,
                    display_name=name,
                    kind=kind.value,
                    role=role.value,
                    status=MemberStatus.active.value,
                    skills=skills,
                    needs=needs,
                    joined_at=utcnow(),
                )
                session.add(member)
                await session.flush()
                await open_member_account(session, community, member)
                members.append(member)
            await _seed_activity(session, community, admin, members)
        return (
            f"seeded community '{DEMO_SLUG}' ({community.id}) with {len(DEMO_PEOPLE) + 1} members; "
            f"logins (password {password!r}): {', '.join(logins)}"
        )
    finally:
        await engine.dispose()


async def _seed_activity(
    session: AsyncSession, community: Community, admin: User, members: list[Member]
) -> None:
    """A few weeks of life: listings, recorded exchanges (roles blurring), a donation, a grant."""
    founder = await session.scalar(
        select(Member).where(Member.community_id == community.id, Member.user_id == admin.id)
    )
    access = CommunityAccess(
        community=community,
        principal=Principal(user=admin, client=None, scopes=frozenset()),
        membership=founder,
    )
    _coordinator, gp, nurse, joan, dev, ellie, kwame, rosa, library = members
    listings = [
        (joan, ListingType.offer, "Allotment help and seedlings", "gardening", ["vegetables"]),
        (dev, ListingType.offer, "Setting up phones and tablets", "IT help", ["smartphones"]),
        (gp, ListingType.request, "Someone to show me how to prune roses", "gardening", ["roses"]),
        (ellie, ListingType.request, "Help moving a wardrobe", "household", []),
        (library, ListingType.offer, "Room for groups, Tuesday evenings", "admin/office", []),
    ]
    for owner, kind, title, category, tags in listings:
        owner_access = CommunityAccess(
            community=community, principal=access.principal, membership=owner
        )
        await exchanges_service.create_listing(
            session,
            owner_access,
            ListingCreate(type=kind, title=title, category=category, tags=tags),
        )
    today = utcnow().date()
    exchanges = [
        (
            [(nurse, 60)],
            [joan, dev, ellie, kwame, rosa],
            "Chair yoga session",
            "health and wellbeing",
            20,
        ),
        ([(joan, 120)], [gp], "Taught Dr Okafor to prune roses", "gardening", 14),
        ([(dev, 90)], [library], "Set up the library's booking tablet", "IT help", 10),
        ([(kwame, 45)], [ellie], "Lift to the surgery", "transport", 7),
        ([(ellie, 60)], [rosa], "Afternoon tea and a chat", "companionship", 3),
    ]
    for providers, receivers, description, category, days_ago in exchanges:
        await exchanges_service.propose_exchange(
            session,
            access,
            ExchangeCreate(
                providers=[PartyInput(member_id=str(p.id), minutes=m) for p, m in providers],
                receivers=[PartyInput(member_id=str(r.id)) for r in receivers],
                split="equal",
                mode="record",
                description=description,
                category=category,
                occurred_on=today - timedelta(days=days_ago),
            ),
        )
    await exchanges_service.donate(
        session, access, DonationCreate(minutes=30, member_id=str(joan.id))
    )
    await exchanges_service.grant(
        session, access, GrantCreate(member_id=str(rosa.id), minutes=20, reason="Settling in")
    )


async def reconcile(
    settings: Settings, community_slug: str | None, seal: bool, *, full: bool = False
) -> ReconciliationRun:
    """Run the reconciliation checks now, in this process; returns the finished run."""
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            community_id = None
            if community_slug is not None:
                community_id = await session.scalar(
                    select(Community.id).where(Community.slug == community_slug)
                )
                if community_id is None:
                    raise LookupError(f"no community has the slug {community_slug!r}")
            run = await reconciliation_service.create_run(
                session, community_id=community_id, seal=seal, user_id=None, full=full
            )
        return await reconciliation_service.execute_run(
            engine, run.id, full_every=settings.full_verification_interval
        )
    finally:
        await engine.dispose()


async def repair_balances(settings: Settings) -> list[dict[str, object]]:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            return await reconciliation_service.repair_balances(session)
    finally:
        await engine.dispose()


async def auto_confirm(settings: Settings) -> tuple[int, int]:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            return await exchanges_service.auto_confirm_due(session)
    finally:
        await engine.dispose()


async def purge_idempotency_keys(settings: Settings) -> int:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            return await purge_expired(session)
    finally:
        await engine.dispose()

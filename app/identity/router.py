"""HTTP for sign-in, users, communities, members and partner clients. Parsing and status
codes only: the rules live in ``service.py`` and ``auth.py``."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request, Response, status

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
    NotPlatformAdmin,
)
from app.access.principal import CurrentPrincipal, CurrentUser, PlatformAdmin
from app.core.database import DbSession
from app.core.errors import InvalidCursor, error_responses
from app.core.pagination import Page, Pagination
from app.identity import auth, errors, service
from app.identity.auth import AuthServices
from app.identity.schemas import (
    ClientCreate,
    ClientCreated,
    ClientRead,
    CommunityCreate,
    CommunityRead,
    CommunityUpdate,
    MemberCreate,
    MemberRead,
    MemberUpdate,
    MeRead,
    RefreshRequest,
    TokenResponse,
    UserCreate,
    UserRead,
)
from app.models.identity import MemberKind, MemberRole, MemberStatus


def get_auth_services(request: Request) -> AuthServices:
    services: AuthServices = request.app.state.auth
    return services


Auth = Annotated[AuthServices, Depends(get_auth_services)]

AnyUser = Annotated[CommunityAccess, Depends(community_guard(None, "community:read"))]
MembersReader = Annotated[
    CommunityAccess, Depends(community_guard(MemberRole.member, "members:read"))
]
CommunityAdmin = Annotated[CommunityAccess, Depends(community_guard(MemberRole.admin, None))]
# Joining is open to any signed-in user; the service decides between "add" and "ask to join".
MembersWriter = Annotated[CommunityAccess, Depends(community_guard(None, "members:write"))]
MemberViewer = Annotated[
    MemberAccess, Depends(member_guard(MemberRole.member, "members:read", allow_self=True))
]
MemberEditor = Annotated[
    MemberAccess, Depends(member_guard(MemberRole.coordinator, "members:write", allow_self=True))
]

_AUTH = (InvalidToken,)
_COMMUNITY = (
    *_AUTH,
    CommunityNotFound,
    NotAMember,
    MembershipInactive,
    InsufficientRole,
    InsufficientScope,
)

# Form fields end up in queries; PostgreSQL refuses NUL in text (InputModel bodies check too).
NO_NUL = r"^[^\x00]*$"

auth_router = APIRouter(prefix="/v1", tags=["auth"])
router = APIRouter(prefix="/v1")


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


@auth_router.post(
    "/auth/token",
    operation_id="issue_token",
    summary="Sign in (OAuth2 password or client_credentials grant)",
    response_model=TokenResponse,
    responses=error_responses(
        errors.InvalidGrant,
        errors.InvalidClient,
        errors.UnsupportedGrantType,
        errors.InvalidScope,
        errors.TooManyLoginAttempts,
    ),
)
async def issue_token(
    request: Request,
    session: DbSession,
    auth_services: Auth,
    grant_type: Annotated[
        str,
        Form(max_length=50, pattern=NO_NUL, description="`password` or `client_credentials`"),
    ],
    username: Annotated[str | None, Form(max_length=254, pattern=NO_NUL)] = None,
    password: Annotated[str | None, Form(max_length=128)] = None,
    scope: Annotated[str, Form(max_length=500, pattern=NO_NUL)] = "",
    client_id: Annotated[str | None, Form(max_length=64, pattern=NO_NUL)] = None,
    client_secret: Annotated[str | None, Form(max_length=200, pattern=NO_NUL)] = None,
) -> TokenResponse:
    if grant_type == "password":
        if not username or not password:
            raise errors.InvalidGrant(
                "The password grant needs `username` (your email) and `password`."
            )
        return await auth.password_grant(
            session,
            auth_services,
            email=username,
            password=password,
            address=_client_address(request),
        )
    if grant_type == "client_credentials":
        basic = _basic_credentials(request)
        if basic is not None:
            client_id, client_secret = basic
        if not client_id or not client_secret:
            raise errors.InvalidClient(
                "Send client_id and client_secret (form fields or HTTP Basic)."
            )
        return await auth.client_credentials_grant(
            session,
            auth_services,
            client_id=client_id,
            client_secret=client_secret,
            requested_scopes=frozenset(scope.split()),
        )
    raise errors.UnsupportedGrantType(f"grant_type {grant_type!r} is not supported here.")


@auth_router.post(
    "/auth/refresh",
    operation_id="refresh_token",
    summary="Exchange a refresh token for a new token pair (the old one stops working)",
    response_model=TokenResponse,
    responses=error_responses(errors.InvalidRefreshToken, errors.RefreshTokenReused),
)
async def refresh_token(
    body: RefreshRequest, session: DbSession, auth_services: Auth
) -> TokenResponse:
    return await auth.rotate_refresh_token(session, auth_services, body.refresh_token)


@auth_router.post(
    "/auth/logout",
    operation_id="logout",
    summary="End a sign-in: its refresh tokens stop working",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(),
)
async def logout(body: RefreshRequest, session: DbSession) -> Response:
    await auth.logout(session, body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@auth_router.post(
    "/users",
    operation_id="register_user",
    summary="Create a login (self sign-up)",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses=error_responses(errors.EmailTaken, errors.SignupDisabled),
)
async def register_user(body: UserCreate, session: DbSession, auth_services: Auth) -> UserRead:
    user = await service.register_user(
        session, auth_services.passwords, body, signup_allowed=auth_services.settings.allow_signup
    )
    return UserRead.model_validate(user)


@auth_router.get(
    "/me",
    operation_id="get_me",
    summary="The signed-in user and their memberships",
    response_model=MeRead,
    responses=error_responses(*_AUTH, NotAUser),
)
async def get_me(user: CurrentUser, session: DbSession) -> MeRead:
    return MeRead(
        user=UserRead.model_validate(user), memberships=await service.memberships_of(session, user)
    )


# --- communities ------------------------------------------------------------------------


@router.post(
    "/communities",
    tags=["communities"],
    operation_id="create_community",
    summary="Create a community (platform admins)",
    status_code=status.HTTP_201_CREATED,
    response_model=CommunityRead,
    responses=error_responses(*_AUTH, NotPlatformAdmin, errors.SlugTaken),
)
async def create_community(
    body: CommunityCreate, admin: PlatformAdmin, session: DbSession
) -> CommunityRead:
    community = await service.create_community(session, admin, body)
    return await service.community_read(session, community)


@router.get(
    "/communities",
    tags=["communities"],
    operation_id="list_communities",
    summary="The directory of communities",
    response_model=Page[CommunityRead],
    responses=error_responses(*_AUTH, InvalidCursor),
)
async def list_communities(
    principal: CurrentPrincipal, session: DbSession, page: Pagination
) -> Page[CommunityRead]:
    communities, next_cursor = await service.list_communities(session, principal, page)
    return Page(
        items=await service.community_reads(session, communities),
        next_cursor=next_cursor,
    )


@router.get(
    "/communities/{community_id}",
    tags=["communities"],
    operation_id="get_community",
    summary="A community's profile and settings",
    response_model=CommunityRead,
    responses=error_responses(*_COMMUNITY),
)
async def get_community(access: AnyUser, session: DbSession) -> CommunityRead:
    return await service.community_read(session, access.community)


@router.patch(
    "/communities/{community_id}",
    tags=["communities"],
    operation_id="update_community",
    summary="Change a community's settings (community admins)",
    response_model=CommunityRead,
    responses=error_responses(*_COMMUNITY),
)
async def update_community(
    body: CommunityUpdate, access: CommunityAdmin, session: DbSession
) -> CommunityRead:
    community = await service.update_community(session, access.community, body.changes())
    return await service.community_read(session, community)


# --- members ----------------------------------------------------------------------------


@router.post(
    "/communities/{community_id}/members",
    tags=["members"],
    operation_id="add_member",
    summary="Add a member (coordinators) or ask to join (anyone signed in)",
    status_code=status.HTTP_201_CREATED,
    response_model=MemberRead,
    responses=error_responses(
        *_COMMUNITY, errors.AlreadyMember, errors.UserNotFound, errors.RoleChangeNotAllowed
    ),
)
async def add_member(body: MemberCreate, access: MembersWriter, session: DbSession) -> MemberRead:
    member = await service.add_member(session, access, body)
    return (await service.member_reads(session, [member]))[0]


@router.get(
    "/communities/{community_id}/members",
    tags=["members"],
    operation_id="list_members",
    summary="Members of a community",
    response_model=Page[MemberRead],
    responses=error_responses(*_COMMUNITY, InvalidCursor),
)
async def list_members(
    access: MembersReader,
    session: DbSession,
    page: Pagination,
    status_filter: Annotated[MemberStatus | None, Query(alias="status")] = None,
    kind: MemberKind | None = None,
    role: MemberRole | None = None,
) -> Page[MemberRead]:
    members, next_cursor = await service.list_members(
        session, access.community, page, status=status_filter, kind=kind, role=role
    )
    return Page(items=await service.member_reads(session, members), next_cursor=next_cursor)


@router.get(
    "/members/{member_id}",
    tags=["members"],
    operation_id="get_member",
    summary="A member's profile",
    response_model=MemberRead,
    responses=error_responses(*_COMMUNITY, MemberNotFound),
)
async def get_member(target: MemberViewer, session: DbSession) -> MemberRead:
    return (await service.member_reads(session, [target.member]))[0]


@router.patch(
    "/members/{member_id}",
    tags=["members"],
    operation_id="update_member",
    summary="Edit your own profile, or (coordinators) approve, suspend and edit members",
    response_model=MemberRead,
    responses=error_responses(
        *_COMMUNITY,
        MemberNotFound,
        errors.FieldNotEditable,
        errors.RoleChangeNotAllowed,
        errors.InvalidStatusChange,
        errors.LastAdmin,
    ),
)
async def update_member(body: MemberUpdate, target: MemberEditor, session: DbSession) -> MemberRead:
    member = await service.update_member(session, target, body)
    return (await service.member_reads(session, [member]))[0]


# --- partner clients --------------------------------------------------------------------


@router.post(
    "/communities/{community_id}/clients",
    tags=["partner clients"],
    operation_id="create_client",
    summary="Register a partner service (community admins); the secret is shown once",
    status_code=status.HTTP_201_CREATED,
    response_model=ClientCreated,
    responses=error_responses(*_COMMUNITY),
)
async def create_client(
    body: ClientCreate, access: CommunityAdmin, session: DbSession
) -> ClientCreated:
    client, secret = await auth.create_client(
        session, access.community.id, body.name, list(body.scopes), access.principal.user
    )
    return ClientCreated(**ClientRead.model_validate(client).model_dump(), client_secret=secret)


@router.get(
    "/communities/{community_id}/clients",
    tags=["partner clients"],
    operation_id="list_clients",
    summary="Partner services registered with a community",
    response_model=list[ClientRead],
    responses=error_responses(*_COMMUNITY),
)
async def list_clients(access: CommunityAdmin, session: DbSession) -> list[ClientRead]:
    return [
        ClientRead.model_validate(c) for c in await auth.list_clients(session, access.community.id)
    ]


@router.delete(
    "/communities/{community_id}/clients/{client_id}",
    tags=["partner clients"],
    operation_id="revoke_client",
    summary="Revoke a partner service: its tokens stop working at once",
    response_model=ClientRead,
    responses=error_responses(*_COMMUNITY, errors.ClientNotFound),
)
async def revoke_client(client_id: str, access: CommunityAdmin, session: DbSession) -> ClientRead:
    return ClientRead.model_validate(
        await auth.revoke_client(session, access.community.id, client_id)
    )

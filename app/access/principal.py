"""Who is asking: a signed-in user or a partner client, resolved from the bearer token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.errors import InvalidToken, NotAUser, NotPlatformAdmin
from app.core.database import DbSession
from app.core.ids import parse_id
from app.core.security import TokenError, TokenService
from app.models import ApiClient, User

oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl="/v1/auth/token",
    auto_error=False,
    scopes={
        "community:read": "Read the community's profile",
        "members:read": "Read members",
        "members:write": "Add and update members",
        "ledger:read": "Read accounts, statements and transactions",
        "ledger:write": "Post and reverse transactions",
        "exchanges:read": "Read listings and exchanges",
        "exchanges:write": "Record exchanges, donations and grants",
        "network:read": "Read the support network and reports",
    },
)

USER_SUBJECT_PREFIX = "user:"
CLIENT_SUBJECT_PREFIX = "client:"


@dataclass(frozen=True)
class Principal:
    """Exactly one of ``user`` and ``client`` is set."""

    user: User | None
    client: ApiClient | None
    scopes: frozenset[str]

    @property
    def is_platform_admin(self) -> bool:
        return self.user is not None and self.user.is_platform_admin

    @property
    def idempotency_scope(self) -> str:
        """Keys are scoped per user or client: by the subject their tokens carry."""
        if self.user is not None:
            return user_subject(self.user.id)
        assert self.client is not None
        return client_subject(self.client.id)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


BearerToken = Annotated[str | None, Depends(oauth2_scheme)]


def user_gone() -> InvalidToken:
    return InvalidToken("The access token's user no longer exists or is disabled.")


def client_revoked() -> InvalidToken:
    return InvalidToken("The access token's client has been revoked.")


@dataclass(frozen=True)
class TokenSubject:
    """What a valid access token says, before the database is asked whether its user or client
    may still act. Exactly one of ``user_id`` and ``client_id`` is set."""

    user_id: uuid.UUID | None
    client_id: uuid.UUID | None
    scopes: frozenset[str]

    @property
    def idempotency_scope(self) -> str:
        if self.user_id is not None:
            return user_subject(self.user_id)
        assert self.client_id is not None
        return client_subject(self.client_id)


def token_subject(tokens: TokenService, token: str | None) -> TokenSubject:
    if not token:
        raise InvalidToken("This route needs a bearer access token (POST /v1/auth/token).")
    try:
        claims = tokens.decode_access_token(token)
    except TokenError as exc:
        raise InvalidToken(f"The access token was refused: {exc}.") from exc
    subject = claims.subject
    if subject.startswith(USER_SUBJECT_PREFIX):
        user_id = parse_id(subject.removeprefix(USER_SUBJECT_PREFIX))
        if user_id is None:
            raise user_gone()
        return TokenSubject(user_id=user_id, client_id=None, scopes=claims.scopes)
    if subject.startswith(CLIENT_SUBJECT_PREFIX):
        client_id = parse_id(subject.removeprefix(CLIENT_SUBJECT_PREFIX))
        if client_id is None:
            raise client_revoked()
        return TokenSubject(user_id=None, client_id=client_id, scopes=claims.scopes)
    raise InvalidToken("The access token's subject is not recognised.")


async def principal_of(session: AsyncSession, subject: TokenSubject) -> Principal:
    """The user or client a token names, provided it may still act."""
    if subject.user_id is not None:
        user = await session.get(User, subject.user_id)
        if user is None or not user.is_active:
            raise user_gone()
        return Principal(user=user, client=None, scopes=frozenset())
    client = await session.scalar(select(ApiClient).where(ApiClient.id == subject.client_id))
    if client is None or client.revoked_at is not None:
        raise client_revoked()
    # A token never carries more than the client holds now.
    return Principal(user=None, client=client, scopes=subject.scopes & frozenset(client.scopes))


async def current_token_subject(request: Request, token: BearerToken) -> TokenSubject:
    """The token's subject, not yet checked against the database (for a route that checks it
    in the same statement as its work). Declared async so FastAPI runs it inline, not on a
    worker thread."""
    return token_subject(request.app.state.tokens, token)


CurrentTokenSubject = Annotated[TokenSubject, Depends(current_token_subject)]


async def get_principal(subject: CurrentTokenSubject, session: DbSession) -> Principal:
    return await principal_of(session, subject)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_current_user(principal: CurrentPrincipal) -> User:
    if principal.user is None:
        raise NotAUser("This route is for signed-in people, not partner clients.")
    return principal.user


CurrentUser = Annotated[User, Depends(get_current_user)]


def user_subject(user_id: uuid.UUID) -> str:
    return f"{USER_SUBJECT_PREFIX}{user_id}"


def client_subject(client_id: uuid.UUID) -> str:
    return f"{CLIENT_SUBJECT_PREFIX}{client_id}"


async def get_platform_admin(principal: CurrentPrincipal) -> User:
    if principal.user is None or not principal.user.is_platform_admin:
        raise NotPlatformAdmin("Only platform admins may do this.")
    return principal.user


PlatformAdmin = Annotated[User, Depends(get_platform_admin)]

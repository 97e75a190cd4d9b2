"""Signing in: the OAuth2 password and client-credentials grants, and refresh-token rotation.

Refresh tokens are opaque, stored as SHA-256, and rotate on every use. A token that was already
rotated and comes back means a copy leaked: the whole family is revoked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.principal import client_subject, user_subject
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.security import (
    PasswordService,
    TokenService,
    constant_time_equals,
    new_opaque_token,
    sha256_hex,
)
from app.identity import errors
from app.identity.login_throttle import LoginThrottle
from app.identity.schemas import TokenResponse
from app.models import ApiClient, RefreshToken, User


@dataclass(frozen=True)
class AuthServices:
    settings: Settings
    passwords: PasswordService
    tokens: TokenService
    throttle: LoginThrottle


async def password_grant(
    session: AsyncSession, auth: AuthServices, *, email: str, password: str, address: str
) -> TokenResponse:
    account = email.strip().lower()
    wait = auth.throttle.retry_after(account, address)
    if wait is not None:
        raise errors.TooManyLoginAttempts(
            f"Try again in {wait} seconds.", headers={"Retry-After": str(wait)}
        )
    user = await session.scalar(select(User).where(User.email == account))
    # Verify even for unknown emails so response time does not reveal who is registered.
    ok = auth.passwords.verify(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        auth.throttle.record_failure(account, address)
        raise errors.InvalidGrant("The email or password is wrong.")
    auth.throttle.record_success(account)
    return await _issue_user_tokens(session, auth, user, family_id=uuid.uuid4())


async def client_credentials_grant(
    session: AsyncSession,
    auth: AuthServices,
    *,
    client_id: str,
    client_secret: str,
    requested_scopes: frozenset[str],
) -> TokenResponse:
    client = await session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    expected = client.secret_hash if client else sha256_hex("no-such-client")
    if (
        client is None
        or client.revoked_at is not None
        or not constant_time_equals(expected, sha256_hex(client_secret))
    ):
        raise errors.InvalidClient("The client id or secret is wrong, or the client was revoked.")
    granted = frozenset(client.scopes)
    if requested_scopes - granted:
        raise errors.InvalidScope(
            f"This client may not request: {', '.join(sorted(requested_scopes - granted))}."
        )
    scopes = requested_scopes or granted
    access = auth.tokens.issue_access_token(client_subject(client.id), scopes)
    return TokenResponse(
        access_token=access,
        expires_in=auth.tokens.access_ttl_seconds,
        scope=" ".join(sorted(scopes)),
    )


async def rotate_refresh_token(
    session: AsyncSession, auth: AuthServices, presented: str
) -> TokenResponse:
    token = await session.scalar(
        select(RefreshToken)
        .where(RefreshToken.token_hash == sha256_hex(presented))
        .with_for_update()
    )
    if token is None:
        raise errors.InvalidRefreshToken("The refresh token is not recognised.")
    if token.revoked_at is not None:
        raise errors.InvalidRefreshToken("The refresh token was revoked; sign in again.")
    if token.rotated_at is not None:
        await _revoke_family(session, token.family_id)
        raise errors.RefreshTokenReused(
            "This refresh token was already used. Every session of this sign-in has been ended; "
            "sign in again."
        )
    if token.expires_at <= utcnow():
        raise errors.InvalidRefreshToken("The refresh token has expired; sign in again.")
    user = await session.get(User, token.user_id)
    if user is None or not user.is_active:
        raise errors.InvalidRefreshToken("The refresh token's user is disabled.")
    token.rotated_at = utcnow()
    return await _issue_user_tokens(session, auth, user, family_id=token.family_id)


async def logout(session: AsyncSession, presented: str) -> None:
    """End the sign-in the refresh token belongs to. Unknown tokens are ignored: logging out
    twice is not an error, and the answer reveals nothing."""
    token = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(presented))
    )
    if token is not None:
        await _revoke_family(session, token.family_id)


async def _issue_user_tokens(
    session: AsyncSession, auth: AuthServices, user: User, *, family_id: uuid.UUID
) -> TokenResponse:
    refresh = new_opaque_token()
    now = utcnow()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id,
            token_hash=sha256_hex(refresh),
            issued_at=now,
            expires_at=now + timedelta(seconds=auth.settings.refresh_token_ttl_seconds),
        )
    )
    await session.flush()
    return TokenResponse(
        access_token=auth.tokens.issue_access_token(user_subject(user.id)),
        expires_in=auth.tokens.access_ttl_seconds,
        refresh_token=refresh,
    )


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


# --- partner clients --------------------------------------------------------------------


async def create_client(
    session: AsyncSession,
    community_id: uuid.UUID,
    name: str,
    scopes: list[str],
    created_by: User | None,
) -> tuple[ApiClient, str]:
    secret = new_opaque_token()
    client = ApiClient(
        client_id=f"tbc_{new_opaque_token(12)}",
        secret_hash=sha256_hex(secret),
        name=name,
        community_id=community_id,
        scopes=sorted(set(scopes)),
        created_by_user_id=created_by.id if created_by else None,
    )
    session.add(client)
    await session.flush()
    return client, secret


async def revoke_client(
    session: AsyncSession, community_id: uuid.UUID, client_id: str
) -> ApiClient:
    client = await session.scalar(
        select(ApiClient).where(
            ApiClient.client_id == client_id, ApiClient.community_id == community_id
        )
    )
    if client is None:
        raise errors.ClientNotFound(f"No client {client_id!r} in this community.")
    if client.revoked_at is None:
        client.revoked_at = utcnow()
        await session.flush()
    return client


async def list_clients(session: AsyncSession, community_id: uuid.UUID) -> list[ApiClient]:
    rows = await session.scalars(
        select(ApiClient)
        .where(ApiClient.community_id == community_id)
        .order_by(ApiClient.created_at)
    )
    return list(rows)

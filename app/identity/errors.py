from __future__ import annotations

from typing import Any

from app.core.errors import Conflict, DomainError, Forbidden, Unauthorized, Unprocessable


class EmailTaken(Conflict):
    code = "email_taken"
    title = "Email already registered"


class SlugTaken(Conflict):
    code = "slug_taken"
    title = "Community slug already taken"


class AlreadyMember(Conflict):
    code = "already_member"
    title = "Already a member of this community"


class UserNotFound(Unprocessable):
    code = "user_not_found"
    title = "No user has that email"


class SignupDisabled(Forbidden):
    code = "signup_disabled"
    title = "Self sign-up is disabled on this server"


class InvalidGrant(DomainError):
    """OAuth2 ``invalid_grant``: wrong username or password."""

    status = 400
    code = "invalid_grant"
    title = "Invalid username or password"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.extra.setdefault("error", self.code)


class InvalidClient(Unauthorized):
    code = "invalid_client"
    title = "Invalid client credentials"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.extra.setdefault("error", self.code)
        self.headers["WWW-Authenticate"] = 'Basic realm="timebank"'


class UnsupportedGrantType(InvalidGrant):
    code = "unsupported_grant_type"
    title = "Unsupported grant type"


class InvalidScope(InvalidGrant):
    code = "invalid_scope"
    title = "Scope not granted to this client"


class InvalidRefreshToken(Unauthorized):
    code = "invalid_refresh_token"
    title = "Refresh token not valid"


class RefreshTokenReused(Unauthorized):
    """A rotated token came back: someone holds a copy. The whole family is revoked, and that
    revocation is kept although the request fails."""

    code = "refresh_token_reused"
    title = "Refresh token reuse detected"
    persist_changes = True


class TooManyLoginAttempts(DomainError):
    status = 429
    code = "too_many_login_attempts"
    title = "Too many failed sign-in attempts"


class RoleChangeNotAllowed(Forbidden):
    code = "role_change_not_allowed"
    title = "Your role cannot grant or change this role"


class FieldNotEditable(Forbidden):
    """A member editing their own profile touched a field only coordinators change."""

    code = "field_not_editable"
    title = "Only coordinators may change this field"


class InvalidStatusChange(Conflict):
    code = "invalid_status_change"
    title = "That status change is not allowed"


class LastAdmin(Conflict):
    code = "last_admin"
    title = "A community keeps at least one active admin"


class ClientNotFound(DomainError):
    status = 404
    code = "client_not_found"
    title = "Client not found"

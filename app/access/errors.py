from __future__ import annotations

from app.core.errors import DomainError, Forbidden, Unauthorized


class InvalidToken(Unauthorized):
    code = "invalid_token"
    title = "Invalid or missing access token"


class NotAUser(Forbidden):
    code = "user_required"
    title = "A signed-in user is required"


class InsufficientRole(Forbidden):
    code = "insufficient_role"
    title = "Your role in this community does not allow this"


class InsufficientScope(Forbidden):
    code = "insufficient_scope"
    title = "The client's scopes do not allow this"


class NotPlatformAdmin(Forbidden):
    code = "platform_admin_required"
    title = "Only platform admins may do this"


class MembershipInactive(Forbidden):
    code = "membership_inactive"
    title = "Your membership is not active"


class CommunityNotFound(DomainError):
    status = 404
    code = "community_not_found"
    title = "Community not found"


class MemberNotFound(DomainError):
    status = 404
    code = "member_not_found"
    title = "Member not found"

from __future__ import annotations

from app.core.errors import Unprocessable


class InvalidWindow(Unprocessable):
    code = "invalid_window"
    title = "The date window holds no days"


class MemberNotInCommunity(Unprocessable):
    code = "member_not_in_community"
    title = "Not a member of this community"

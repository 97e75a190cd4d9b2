from __future__ import annotations

from app.core.errors import DomainError, Unprocessable


class NotAcceptable(DomainError):
    status = 406
    code = "not_acceptable"
    title = "No representation matches the Accept header"


class TooManyPeriods(Unprocessable):
    code = "too_many_periods"
    title = "The window holds too many periods"

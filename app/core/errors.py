"""RFC 9457 problem details: every error a client sees has this one shape.

Services raise :class:`DomainError` subclasses that carry their HTTP status and a stable
``code``; one handler renders them. Validation errors, 404/405 from routing and unexpected
exceptions are rendered the same way, and a 500 never says anything internal.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("timebank.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://timebank.dev/problems/"


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(
        description="Where the problem is: body, query, path or header, then the field"
    )
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "type": "https://timebank.dev/problems/insufficient_balance",
                "title": "Insufficient balance",
                "status": 409,
                "detail": "Account would fall to -1230 minutes; its limit is -1200.",
                "code": "insufficient_balance",
            }
        }
    )

    type: str
    title: str
    status: int
    detail: str | None = None
    code: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldProblem] | None = None


class DomainError(Exception):
    """A refusal that a client can act on. Subclasses set ``status``, ``code`` and ``title``."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    # Security events (a reused refresh token) must be recorded even though the request fails.
    persist_changes: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class NotFound(DomainError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(DomainError):
    status = 409
    code = "conflict"
    title = "Conflict"


class Unprocessable(DomainError):
    status = 422
    code = "unprocessable"
    title = "Unprocessable request"


class Unauthorized(DomainError):
    status = 401
    code = "not_authenticated"
    title = "Not authenticated"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(DomainError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class InvalidCursor(DomainError):
    status = 422
    code = "invalid_cursor"
    title = "Invalid cursor"


class PayloadTooLarge(DomainError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class IdempotencyKeyRequired(DomainError):
    """A write that moves hours came without its Idempotency-Key header. FastAPI refuses the
    request while validating headers, before any feature code runs, so the validation handler
    below answers with this instead of a generic 422."""

    status = 400
    code = "idempotency_key_required"
    title = "Idempotency-Key header required"


def problem_body(error: DomainError) -> dict[str, Any]:
    """The problem document of a refusal, outside any response (batch results carry one per
    refused item)."""
    return {
        "type": PROBLEM_TYPE_BASE + error.code,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        **error.extra,
    }


def problem_response(
    request: Request | None,
    *,
    status: int,
    code: str,
    title: str,
    detail: str | None,
    headers: Mapping[str, str] | None = None,
    errors: Sequence[FieldProblem] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["instance"] = request.url.path
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            body["request_id"] = request_id
    if errors:
        body["errors"] = [e.model_dump() for e in errors]
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


def _validation_errors(exc: RequestValidationError) -> list[FieldProblem]:
    problems = []
    for err in exc.errors():
        loc = [part if isinstance(part, int) else str(part) for part in err.get("loc", ())]
        problems.append(
            FieldProblem(loc=loc, msg=str(err.get("msg", "")), type=str(err.get("type", "")))
        )
    return problems


async def _handle_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return domain_error_response(request, exc)


def domain_error_response(request: Request, exc: DomainError) -> JSONResponse:
    """The problem document of a refusal, as every route answers it."""
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = _validation_errors(exc)
    if any(p.type == "json_invalid" for p in problems):
        return problem_response(
            request,
            status=400,
            code="malformed_json",
            title="Malformed JSON",
            detail="The request body is not valid JSON.",
            errors=problems,
        )
    if problems and all(
        p.type == "missing" and p.loc == ["header", "Idempotency-Key"] for p in problems
    ):
        return await _handle_domain_error(
            request,
            IdempotencyKeyRequired(
                "Send an Idempotency-Key header so a retried request cannot post twice."
            ),
        )
    summary = "; ".join(f"{'.'.join(str(x) for x in p.loc)}: {p.msg}" for p in problems[:5])
    return problem_response(
        request,
        status=422,
        code="validation_error",
        title="Request validation failed",
        detail=summary,
        errors=problems,
    )


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    401: "not_authenticated",
    403: "forbidden",
    413: "payload_too_large",
}


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    code = _HTTP_CODES.get(status, title.lower().replace(" ", "_"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    if status == 404 and detail == "Not Found":
        detail = f"No route matches {request.method} {request.url.path}."
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 405:
        # Starlette names only the methods of the first route that matched the path; FastAPI
        # registers one route per method, so name every method the contract lists for it.
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; use {', '.join(allowed)}."
    return problem_response(
        request,
        status=status,
        code=code,
        title=title,
        detail=detail,
        headers=headers or None,
    )


def _allowed_methods(request: Request) -> list[str]:
    """The methods the published contract lists for this path (empty when it lists none)."""
    app = request.app
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(
        app.state, "allowed_methods", None
    )
    if table is None:
        table = []
        for template, operations in app.openapi().get("paths", {}).items():
            pattern = re.sub(r"\\{[^/}]+\\}", "[^/]+", re.escape(template))
            table.append((re.compile(f"^{pattern}$"), sorted(m.upper() for m in operations)))
        app.state.allowed_methods = table
    path = request.url.path
    return next((methods for pattern, methods in table if pattern.match(path)), [])


def database_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or the connection broke (a restart, a failover, a
    pool exhausted): the request may simply be retried, so the answer is 503, not 500. The
    ledger's single-posting path talks to asyncpg and sqlite3 directly, so their connection
    errors (and SQLite's "database is locked" after its busy timeout) count too.
    """
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    return isinstance(
        exc,
        sa_exc.TimeoutError
        | sa_exc.DisconnectionError
        | OSError
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError
        | sqlite3.OperationalError,
    )


def internal_error_response(request: Request, exc: BaseException) -> JSONResponse:
    """Log ``exc`` with its traceback and answer a 500 that says nothing internal (a 503 with
    ``Retry-After`` when the database is unreachable)."""
    if database_unavailable(exc):
        logger.warning("database unavailable: %s", type(exc).__name__)
        return problem_response(
            request,
            status=503,
            code="database_unavailable",
            title="Database unavailable",
            detail="The database is not answering; retry shortly (with the same Idempotency-Key).",
            headers={"Retry-After": "1"},
        )
    logger.error("unhandled error", exc_info=exc)
    return problem_response(
        request,
        status=500,
        code="internal_error",
        title="Internal server error",
        detail="The server could not complete the request. Quote the request id when reporting it.",
    )


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Reached only for errors outside RequestContextMiddleware, which renders the rest itself
    # so that a 500 also carries the request id and security headers.
    return internal_error_response(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _handle_domain_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(Exception, _handle_unexpected)


class _ValidationFailed(DomainError):
    status = 422
    code = "validation_error"


def error_responses(*errors: type[DomainError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route: each status it can answer, with the codes."""
    by_status: dict[int, list[type[DomainError]]] = {}
    declared: tuple[type[DomainError], ...] = (*errors, _ValidationFailed)
    for error in declared:
        by_status.setdefault(error.status, []).append(error)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, errs in sorted(by_status.items()):
        codes = sorted({e.code for e in errs})
        responses[status] = {
            "description": "; ".join(f"`{c}`" for c in codes),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    return responses

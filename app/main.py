"""create_app(): settings, lifespan (engine and sessionmaker), middleware, routers, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from sqlalchemy import text

from app.core.config import Settings, get_settings
from app.core.database import READ_SNAPSHOT_OPTION, create_engine, create_sessionmaker
from app.core.errors import (
    PROBLEM_CONTENT_TYPE,
    DomainError,
    Problem,
    error_responses,
    install_error_handlers,
)
from app.core.keepalive import KeepAliveLimitMiddleware
from app.core.observability import Metrics, RequestContextMiddleware, configure_logging
from app.core.runtime import freeze_startup_objects
from app.core.security import PasswordService, TokenService
from app.core.worker_load import WorkerLoad
from app.exchanges.router import router as exchanges_router
from app.identity.auth import AuthServices
from app.identity.login_throttle import LoginThrottle
from app.identity.router import auth_router
from app.identity.router import router as identity_router
from app.ledger.fast_path import SinglePostingFastPath
from app.ledger.router import router as ledger_router
from app.ledger.single_post import single_poster as ledger_single_poster
from app.network.router import router as network_router
from app.reconciliation.router import router as reconciliation_router
from app.reports.router import router as reports_router

API_DESCRIPTION = """\
The books of a community time bank: a double-entry ledger of hours kept in whole minutes,
reciprocal exchanges between members, and the support network they build.

Every error is an RFC 9457 `application/problem+json` document with a stable `code`.
Lists are cursor-paginated (`limit`, `cursor` → `next_cursor`). Writes that move hours take
an `Idempotency-Key` header.
"""


OPENAPI_TAGS = [
    {"name": "auth", "description": "Sign-in, tokens and the current user"},
    {"name": "communities", "description": "Time banks (tenants)"},
    {"name": "members", "description": "Memberships: citizens, professionals, organisations"},
    {"name": "partner clients", "description": "Client-credentials access for partner services"},
    {"name": "ledger", "description": "Accounts, statements and balanced transactions"},
    {"name": "listings", "description": "Offers and requests: what people can give and need"},
    {"name": "exchanges", "description": "Help given and received, confirmed and posted"},
    {"name": "fund", "description": "The community fund: donations in, grants out"},
    {"name": "network", "description": "Support connections between members and their metrics"},
    {"name": "reports", "description": "Activity and co-production indicators"},
    {"name": "reconciliation", "description": "Proving the books: checks, seals, external records"},
    {"name": "operations", "description": "Health, readiness and metrics"},
]


class DatabaseUnavailable(DomainError):
    status = 503
    code = "database_unavailable"
    title = "Database unavailable"


class Health(BaseModel):
    status: str


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, json_logs=settings.log_json)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        if write_lock is not None:
            app.state.sqlite_write_lock = write_lock
        single_poster = ledger_single_poster(engine, settings, write_lock)
        app.state.single_poster = single_poster
        if settings.environment != "test":
            # The test suite opens and closes an event loop per test; there, garbage left by a
            # failed aiosqlite connection must be collected (as by default) before its loop
            # closes, or its worker thread reports to a closed loop during a later test.
            freeze_startup_objects()
        try:
            yield
        finally:
            await single_poster.close()
            await engine.dispose()

    app = FastAPI(
        title="timebank",
        version="1.0.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=OPENAPI_TAGS,
        # The service exports its own Prometheus metrics and JSON logs (app.core.observability).
        # FastAPI's native OpenTelemetry hooks would look up tracer, meter and logger
        # providers on every request and dependency for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    passwords = PasswordService(settings)
    tokens = TokenService(settings)
    app.state.tokens = tokens
    app.state.auth = AuthServices(
        settings=settings,
        passwords=passwords,
        tokens=tokens,
        throttle=LoginThrottle(
            window_seconds=settings.login_window_seconds,
            per_account=settings.login_max_failures_per_account,
            per_address=settings.login_max_failures_per_address,
        ),
    )

    install_error_handlers(app)
    # Innermost: answers well-formed single postings inside CORS, request context and metrics.
    app.add_middleware(SinglePostingFastPath)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Idempotency-Replayed", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_request_body_bytes
    )
    app.add_middleware(
        KeepAliveLimitMiddleware,
        max_requests=settings.keepalive_requests,
        load=WorkerLoad.from_environment(),
    )

    app.openapi = lambda: _openapi_with_problems(app)  # type: ignore[method-assign]
    app.include_router(auth_router)
    app.include_router(identity_router)
    app.include_router(ledger_router)
    app.include_router(exchanges_router)
    app.include_router(network_router)
    app.include_router(reports_router)
    app.include_router(reconciliation_router)
    _add_operations_routes(app)
    return app


def _openapi_with_problems(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus the Problem document every error response refers to."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        definitions = models_json_schema(
            [(Problem, "serialization")], ref_template="#/components/schemas/{model}"
        )[1]
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(definitions.get("$defs", {}))
        _declare_body_refusals(schema)
        app.openapi_schema = schema
    return app.openapi_schema


_BODY_REFUSALS: dict[str, str] = {
    "400": "`malformed_json`: the body is not valid JSON; `bad_request`: it could not be read",
    "413": "`payload_too_large`: the body is over `TIMEBANK_MAX_REQUEST_BODY_BYTES`",
}


def _declare_body_refusals(schema: dict[str, Any]) -> None:
    """Every operation that reads a body can refuse it before validation: declare both."""
    problem = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if "requestBody" not in operation:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in _BODY_REFUSALS.items():
                if status in responses:
                    codes = responses[status]["description"]
                    if description.split(":")[0] not in codes:
                        responses[status]["description"] = f"{codes}; {description}"
                else:
                    responses[status] = {"description": description, "content": problem}
            operation["responses"] = dict(sorted(responses.items()))


def _add_operations_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"], operation_id="healthz", response_model=Health)
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["operations"],
        operation_id="readyz",
        response_model=Health,
        responses=error_responses(DatabaseUnavailable),
    )
    async def readyz(request: Request) -> Health:
        """The database answers."""
        try:
            async with request.app.state.engine.connect() as conn:
                # A read snapshot: on SQLite a plain BEGIN IMMEDIATE would queue behind writers.
                await conn.execution_options(**{READ_SNAPSHOT_OPTION: True})
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise DatabaseUnavailable("The database did not answer.") from exc
        return Health(status="ok")

    @app.get(
        "/metrics",
        tags=["operations"],
        operation_id="metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def metrics(request: Request) -> Response:
        """Request counts and latencies by route, in Prometheus text format."""
        return Response(
            generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

"""HTTP for reconciliation runs and external-record matching (admins only)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response, status
from sqlalchemy import select

from app.access.errors import InvalidToken
from app.access.principal import CurrentPrincipal
from app.core.database import DbSession
from app.core.errors import InvalidCursor, error_responses
from app.core.ids import parse_id
from app.core.pagination import Page, Pagination
from app.models import Community, ExternalRecordMatch, Member, ReconciliationRun
from app.models.identity import MemberRole, MemberStatus
from app.reconciliation import errors, external, service
from app.reconciliation.schemas import ExternalMatchRead, ReconciliationCreate, ReconciliationRead

router = APIRouter(prefix="/v1/admin", tags=["reconciliation"])

MAX_UPLOAD_BYTES = 5 * 1024 * 1024


async def _admin_communities(
    session: DbSession, principal: CurrentPrincipal
) -> list[uuid.UUID] | None:
    """None: every community (platform admins). Otherwise the communities the caller admins."""
    if principal.is_platform_admin:
        return None
    if principal.user is None:
        raise errors.ReconciliationForbidden("Partner clients cannot run reconciliations.")
    ids = list(
        await session.scalars(
            select(Member.community_id).where(
                Member.user_id == principal.user.id,
                Member.role == MemberRole.admin.value,
                Member.status == MemberStatus.active.value,
            )
        )
    )
    if not ids:
        raise errors.ReconciliationForbidden("Only platform admins and community admins reconcile.")
    return ids


AdminScope = Annotated[list[uuid.UUID] | None, Depends(_admin_communities)]


async def _visible_run(
    session: DbSession, scope: list[uuid.UUID] | None, raw_id: str
) -> ReconciliationRun:
    run_id = parse_id(raw_id)
    run = await session.get(ReconciliationRun, run_id) if run_id else None
    if run is None or (scope is not None and run.community_id not in scope):
        raise errors.ReconciliationNotFound(f"No reconciliation run has id {raw_id!r}.")
    return run


_ERRORS = (InvalidToken, errors.ReconciliationForbidden)


@router.post(
    "/reconciliations",
    operation_id="start_reconciliation",
    summary="Start a reconciliation run in the background; poll it for progress and the report",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReconciliationRead,
    responses=error_responses(*_ERRORS, errors.ReconciliationNotFound),
)
async def start_reconciliation(
    body: ReconciliationCreate,
    principal: CurrentPrincipal,
    scope: AdminScope,
    session: DbSession,
    request: Request,
    background: BackgroundTasks,
) -> ReconciliationRead:
    community_id = None
    if body.community_id is not None:
        community_id = parse_id(body.community_id)
        community = await session.get(Community, community_id) if community_id else None
        if community is None or (scope is not None and community.id not in scope):
            raise errors.ReconciliationForbidden(
                f"You cannot reconcile community {body.community_id!r}."
            )
    elif scope is not None:
        raise errors.ReconciliationForbidden(
            "Only platform admins reconcile the whole ledger; name a community."
        )
    run = await service.create_run(
        session,
        community_id=community_id,
        seal=body.seal,
        full=body.full,
        user_id=principal.user.id if principal.user else None,
    )
    background.add_task(
        service.execute_run,
        request.app.state.engine,
        run.id,
        full_every=request.app.state.settings.full_verification_interval,
    )
    return ReconciliationRead.model_validate(run)


@router.get(
    "/reconciliations",
    operation_id="list_reconciliations",
    summary="Reconciliation runs, newest first",
    response_model=Page[ReconciliationRead],
    responses=error_responses(*_ERRORS, InvalidCursor),
)
async def list_reconciliations(
    scope: AdminScope, session: DbSession, page: Pagination
) -> Page[ReconciliationRead]:
    runs, next_cursor = await service.list_runs(session, page, scope)
    return Page(items=[ReconciliationRead.model_validate(r) for r in runs], next_cursor=next_cursor)


@router.get(
    "/reconciliations/{reconciliation_id}",
    operation_id="get_reconciliation",
    summary="A run: status, progress and its report",
    response_model=ReconciliationRead,
    responses={
        **error_responses(*_ERRORS, errors.ReconciliationNotFound),
        200: {
            "content": {"text/plain": {}},
            "description": "JSON, or `Accept: text/plain` for the text report",
        },
    },
)
async def get_reconciliation(
    reconciliation_id: str, scope: AdminScope, session: DbSession, request: Request
) -> Response | ReconciliationRead:
    run = await _visible_run(session, scope, reconciliation_id)
    if "text/plain" in request.headers.get("accept", ""):
        return Response(service.render_text(run) + "\n", media_type="text/plain")
    return ReconciliationRead.model_validate(run)


@router.post(
    "/reconciliations/{reconciliation_id}/external-records",
    operation_id="match_external_records",
    summary="Match a CSV of external records against the ledger's exchanges",
    status_code=status.HTTP_201_CREATED,
    response_model=ExternalMatchRead,
    responses={
        **error_responses(
            *_ERRORS,
            errors.ReconciliationNotFound,
            errors.CommunityRequired,
            errors.ExternalFileInvalid,
            errors.UnsupportedMediaType,
        ),
        201: {
            "content": {"text/csv": {}},
            "description": "JSON, or `Accept: text/csv` for a flat CSV",
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def match_external_records(
    reconciliation_id: str,
    principal: CurrentPrincipal,
    scope: AdminScope,
    session: DbSession,
    request: Request,
    tolerance_days: Annotated[int, Query(ge=0, le=60, description="Date tolerance")] = 3,
) -> Response | ExternalMatchRead:
    run = await _visible_run(session, scope, reconciliation_id)
    if run.community_id is None:
        raise errors.CommunityRequired(
            "Start a run for one community, then upload its records to it."
        )
    filename, content = await _read_csv(request)
    try:
        result = await external.match_file(session, run.community_id, content, tolerance_days)
    except external.ExternalFileError as exc:
        raise errors.ExternalFileInvalid(str(exc)) from exc
    match = ExternalRecordMatch(
        run_id=run.id,
        filename=filename,
        uploaded_by_user_id=principal.user.id if principal.user else None,
        tolerance_days=tolerance_days,
        summary=result.summary,
        result=result.rows,
    )
    session.add(match)
    await session.flush()
    if "text/csv" in request.headers.get("accept", ""):
        return Response(external.result_csv(result), status_code=201, media_type="text/csv")
    return ExternalMatchRead.model_validate(match)


async def _read_csv(request: Request) -> tuple[str, str]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        # The context closes the upload's spooled temporary file, whatever happens.
        async with request.form(max_files=1) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise errors.ExternalFileInvalid("Send the CSV as the form field 'file'.")
            raw = await upload.read(MAX_UPLOAD_BYTES + 1)
            filename = upload.filename or ""
    elif content_type.startswith(("text/csv", "text/plain", "application/csv")):
        raw = await request.body()
        filename = ""
    else:
        raise errors.UnsupportedMediaType(
            f"Got {content_type or 'no content type'}; send text/csv."
        )
    if len(raw) > MAX_UPLOAD_BYTES:
        raise errors.ExternalFileInvalid(f"The file is larger than {MAX_UPLOAD_BYTES} bytes.")
    try:
        return filename, raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise errors.ExternalFileInvalid("The file is not UTF-8 text.") from exc

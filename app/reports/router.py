"""HTTP for reports: JSON by default, CSV for ``Accept: text/csv``."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from app.access.community import CommunityAccess, NotAMember, community_guard
from app.access.errors import (
    CommunityNotFound,
    InsufficientRole,
    InsufficientScope,
    InvalidToken,
    MembershipInactive,
)
from app.core.database import DbSession
from app.core.errors import error_responses
from app.models.identity import MemberRole
from app.network import errors as network_errors
from app.network import service as network
from app.network.cache import NetworkCache, cache_from_state
from app.network.graph import Window
from app.reports import errors, service
from app.reports.schemas import ActivityReport, ActivityTable, CoproductionReport, Period

router = APIRouter(prefix="/v1", tags=["reports"])

CommunityReportReader = Annotated[
    CommunityAccess, Depends(community_guard(MemberRole.coordinator, "network:read"))
]
CSV = "text/csv"
JSON = "application/json"


def get_cache(request: Request) -> NetworkCache:
    return cache_from_state(request.app.state)


Cache = Annotated[NetworkCache, Depends(get_cache)]


def window_params(
    since: Annotated[date | None, Query(description="First day counted (inclusive)")] = None,
    until: Annotated[date | None, Query(description="Last day counted (inclusive)")] = None,
) -> Window:
    return network.make_window(since, until)


WindowParams = Annotated[Window, Depends(window_params)]


def wants_csv(accept: str | None) -> bool:
    """Content negotiation between JSON (the default) and CSV, by the Accept header's q-values.
    Nothing acceptable: 406."""
    if not accept:
        return False
    best: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best[media.lower()] = max(best.get(media.lower(), 0.0), quality)

    def quality_of(media: str) -> float:
        kind = media.split("/")[0]
        for candidate in (media, f"{kind}/*", "*/*"):
            if candidate in best:
                return best[candidate]
        return 0.0

    csv_q, json_q = quality_of(CSV), quality_of(JSON)
    if csv_q <= 0 and json_q <= 0:
        raise errors.NotAcceptable("These reports come as application/json or text/csv.")
    return csv_q > json_q


AcceptHeader = Annotated[str | None, Header(alias="Accept")]


def _csv(body: str, filename: str) -> Response:
    return Response(
        content=body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _responses(model: type[Any]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "JSON, or CSV with `Accept: text/csv`",
            "content": {
                JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
                CSV: {"schema": {"type": "string"}},
            },
        },
        **error_responses(
            InvalidToken,
            InsufficientRole,
            InsufficientScope,
            MembershipInactive,
            CommunityNotFound,
            NotAMember,
            network_errors.InvalidWindow,
            errors.NotAcceptable,
            errors.TooManyPeriods,
        ),
    }


@router.get(
    "/communities/{community_id}/reports/activity",
    operation_id="get_activity_report",
    summary="Exchanges, hours, active and new members per period, and retention by join period",
    response_model=ActivityReport,
    responses=_responses(ActivityReport),
)
async def get_activity_report(
    access: CommunityReportReader,
    session: DbSession,
    window: WindowParams,
    period: Period = Period.month,
    table: Annotated[
        ActivityTable, Query(description="Which table the CSV holds (JSON holds both)")
    ] = ActivityTable.periods,
    accept: AcceptHeader = None,
) -> Any:
    as_csv = wants_csv(accept)
    report = await service.activity(session, access.community, period, window)
    if as_csv:
        return _csv(
            service.activity_csv(report, table.value),
            f"{access.community.slug}-activity-{table.value}.csv",
        )
    return report


@router.get(
    "/communities/{community_id}/reports/coproduction",
    operation_id="get_coproduction_report",
    summary="One indicator per principle of co-production, each with its definition",
    response_model=CoproductionReport,
    responses=_responses(CoproductionReport),
)
async def get_coproduction_report(
    access: CommunityReportReader,
    session: DbSession,
    cache: Cache,
    window: WindowParams,
    accept: AcceptHeader = None,
) -> Any:
    as_csv = wants_csv(accept)
    report = await service.coproduction(session, cache, access.community, window)
    if as_csv:
        return _csv(service.coproduction_csv(report), f"{access.community.slug}-coproduction.csv")
    return report

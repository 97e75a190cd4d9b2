"""HTTP for the support network. Thin: parse, call one service function, shape the reply."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from app.access.community import (
    CommunityAccess,
    MemberAccess,
    NotAMember,
    community_guard,
    member_guard,
)
from app.access.errors import (
    CommunityNotFound,
    InsufficientRole,
    InsufficientScope,
    InvalidToken,
    MemberNotFound,
    MembershipInactive,
)
from app.core.database import DbSession
from app.core.errors import InvalidCursor, error_responses
from app.core.pagination import Pagination
from app.models.identity import MemberKind, MemberRole
from app.network import errors, exports, service
from app.network.cache import NetworkCache, cache_from_state
from app.network.graph import GraphFilter, Window
from app.network.schemas import (
    ConnectionsPage,
    EgoNetwork,
    GraphFormat,
    NetworkMetricsRead,
    PathMode,
    PathRead,
    SuggestionsRead,
)

router = APIRouter(prefix="/v1", tags=["network"])

NETWORK_SCOPE = "network:read"

# The member themself, the community's coordinators and admins, partner clients with
# network:read. Other members see nobody's ties.
MemberNetworkViewer = Annotated[
    MemberAccess,
    Depends(member_guard(MemberRole.coordinator, NETWORK_SCOPE, allow_self=True)),
]
CommunityNetworkReader = Annotated[
    CommunityAccess, Depends(community_guard(MemberRole.coordinator, NETWORK_SCOPE))
]


def get_cache(request: Request) -> NetworkCache:
    return cache_from_state(request.app.state)


Cache = Annotated[NetworkCache, Depends(get_cache)]


def window_params(
    since: Annotated[
        date | None, Query(description="First day of service counted (inclusive)")
    ] = None,
    until: Annotated[
        date | None, Query(description="Last day of service counted (inclusive)")
    ] = None,
) -> Window:
    return service.make_window(since, until)


def filter_params(
    kind: Annotated[
        list[MemberKind] | None,
        Query(description="Keep only members of these kinds (repeat the parameter for several)"),
    ] = None,
    min_minutes: Annotated[
        int, Query(ge=0, le=10_000_000, description="Leave out ties below this many minutes")
    ] = 0,
) -> GraphFilter:
    return service.make_filter([k.value for k in kind] if kind else None, min_minutes)


WindowParams = Annotated[Window, Depends(window_params)]
FilterParams = Annotated[GraphFilter, Depends(filter_params)]

_AUTH = (InvalidToken, InsufficientRole, InsufficientScope, MembershipInactive)
_MEMBER_AUTH = (*_AUTH, MemberNotFound)
_COMMUNITY_AUTH = (*_AUTH, CommunityNotFound, NotAMember)


@router.get(
    "/members/{member_id}/connections",
    operation_id="get_member_connections",
    summary="People the member gave to and received from, minutes each way, strongest first",
    response_model=ConnectionsPage,
    responses=error_responses(*_MEMBER_AUTH, errors.InvalidWindow, InvalidCursor),
)
async def get_member_connections(
    target: MemberNetworkViewer,
    session: DbSession,
    window: WindowParams,
    filters: FilterParams,
    page: Pagination,
) -> ConnectionsPage:
    return await service.member_connections(session, target.member, window, filters, page)


@router.get(
    "/members/{member_id}/network",
    operation_id="get_member_network",
    summary="The member's ego network: everyone within `depth` ties, as node-link JSON",
    response_model=EgoNetwork,
    responses=error_responses(*_MEMBER_AUTH, errors.InvalidWindow),
)
async def get_member_network(
    target: MemberNetworkViewer,
    session: DbSession,
    cache: Cache,
    window: WindowParams,
    filters: FilterParams,
    depth: Annotated[int, Query(ge=1, le=3, description="Ties away from the member")] = 1,
    limit: Annotated[
        int, Query(ge=1, le=5000, description="Most members returned, closest first")
    ] = 500,
) -> EgoNetwork:
    return await service.ego_network(session, cache, target.member, window, filters, depth, limit)


@router.get(
    "/members/{member_id}/suggestions",
    operation_id="get_member_suggestions",
    summary="Open requests the member could answer and offers that meet their needs, "
    "closest in the network first",
    response_model=SuggestionsRead,
    responses=error_responses(*_MEMBER_AUTH),
)
async def get_member_suggestions(
    target: MemberNetworkViewer,
    session: DbSession,
    cache: Cache,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SuggestionsRead:
    return await service.suggestions(session, cache, target.member, limit)


@router.get(
    "/communities/{community_id}/network",
    operation_id="export_community_network",
    summary="The community's support network as node-link JSON, Cytoscape.js, GraphML or GEXF",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The graph, streamed",
            "content": {media: {} for media in sorted(set(exports.MEDIA_TYPES.values()))},
        },
        **error_responses(*_COMMUNITY_AUTH, errors.InvalidWindow),
    },
)
async def export_community_network(
    access: CommunityNetworkReader,
    session: DbSession,
    cache: Cache,
    window: WindowParams,
    filters: FilterParams,
    graph_format: Annotated[GraphFormat, Query(alias="format")] = GraphFormat.node_link,
) -> StreamingResponse:
    snap, view = await service.graph_for_export(
        session, cache, access.community.id, window, filters
    )
    filename = f"{access.community.slug}-network.{exports.EXTENSIONS[graph_format]}"
    return StreamingResponse(
        exports.export(view, graph_format),
        media_type=exports.MEDIA_TYPES[graph_format],
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Computed-At": snap.graph.computed_at.isoformat(),
            "X-Stale": "true" if snap.stale else "false",
        },
    )


@router.get(
    "/communities/{community_id}/network/metrics",
    operation_id="get_community_network_metrics",
    summary="Size, reciprocity, components, clustering, brokers and kind mixing of the network",
    response_model=NetworkMetricsRead,
    responses=error_responses(*_COMMUNITY_AUTH, errors.InvalidWindow),
)
async def get_community_network_metrics(
    access: CommunityNetworkReader,
    session: DbSession,
    cache: Cache,
    window: WindowParams,
    filters: FilterParams,
) -> NetworkMetricsRead:
    return await service.community_metrics(session, cache, access.community.id, window, filters)


@router.get(
    "/communities/{community_id}/network/path",
    operation_id="get_community_network_path",
    summary="The shortest chain of support between two members (empty, with a reason, if none)",
    response_model=PathRead,
    responses=error_responses(*_COMMUNITY_AUTH, errors.InvalidWindow, errors.MemberNotInCommunity),
)
async def get_community_network_path(
    access: CommunityNetworkReader,
    session: DbSession,
    cache: Cache,
    window: WindowParams,
    filters: FilterParams,
    from_member: Annotated[str, Query(alias="from", min_length=1, max_length=64)],
    to_member: Annotated[str, Query(alias="to", min_length=1, max_length=64)],
    mode: PathMode = PathMode.directed,
) -> PathRead:
    return await service.support_path(
        session, cache, access.community.id, from_member, to_member, mode, window, filters
    )

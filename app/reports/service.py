"""Activity over time and one indicator per principle of co-production.

The principles are those of NEF / the Coproducing Health briefing: assets, capabilities,
mutuality, networks, blurred roles, catalysts. Each indicator carries its definition, and
docs/coproduction-indicators.md says the same in prose.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, timedelta

from sqlalchemy import distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.clock import utcnow
from app.models import Category, Community, Exchange, ExchangeParty, Listing, Member
from app.models.exchanges import DEFAULT_CATEGORIES, ListingStatus, ListingType, PartyRole
from app.models.identity import MemberKind, MemberStatus
from app.network import service as network
from app.network.cache import NetworkCache
from app.network.graph import GraphFilter, Window, betweenness_of, largest_weak_component, without
from app.reports import errors
from app.reports.schemas import (
    ActivityReport,
    CategoryGiven,
    Cohort,
    CoproductionReport,
    Indicator,
    Period,
    PeriodActivity,
    Principle,
)

MAX_PERIODS = 600


# --- periods ------------------------------------------------------------------------------


def period_start(day: date, period: Period) -> date:
    if period == Period.week:
        return day - timedelta(days=day.weekday())
    if period == Period.month:
        return day.replace(day=1)
    if period == Period.quarter:
        return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    return date(day.year, 1, 1)


def next_period(start: date, period: Period) -> date:
    if period == Period.week:
        return start + timedelta(days=7)
    if period == Period.year:
        return date(start.year + 1, 1, 1)
    months = 1 if period == Period.month else 3
    month = start.month - 1 + months
    return date(start.year + month // 12, month % 12 + 1, 1)


def period_label(start: date, period: Period) -> str:
    if period == Period.week:
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if period == Period.month:
        return f"{start.year}-{start.month:02d}"
    if period == Period.quarter:
        return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
    return str(start.year)


def period_starts(since: date, until: date, period: Period) -> list[date]:
    starts = []
    current = period_start(since, period)
    while current <= until:
        starts.append(current)
        if len(starts) > MAX_PERIODS:
            raise errors.TooManyPeriods(
                f"{since} to {until} holds more than {MAX_PERIODS} {period}s; "
                "narrow the window or choose a longer period."
            )
        current = next_period(current, period)
    return starts


# --- activity -----------------------------------------------------------------------------


async def activity(
    session: AsyncSession, community: Community, period: Period, window: Window
) -> ActivityReport:
    until = window.until or utcnow().date()
    since = window.since
    if since is None:
        # From the community's first day, or its earliest back-dated exchange if earlier.
        earliest = await session.scalar(
            select(func.min(Exchange.occurred_on)).where(
                *network.counted_exchanges(community.id, Window(None, until))
            )
        )
        since = min(community.created_at.date(), earliest or until)
    starts = period_starts(since, until, period)
    index = {start: i for i, start in enumerate(starts)}
    counted = network.counted_exchanges(community.id, Window(since, until))

    def slot(day: date) -> int:
        return index[period_start(day, period)]

    exchanges = [0] * len(starts)
    minutes = [0] * len(starts)
    by_day = await session.execute(
        select(Exchange.occurred_on, func.count(), func.sum(Exchange.total_minutes))
        .where(*counted)
        .group_by(Exchange.occurred_on)
    )
    for day, count, total in by_day:
        exchanges[slot(day)] += int(count)
        minutes[slot(day)] += int(total or 0)

    active_in: dict[int, set[uuid.UUID]] = defaultdict(set)
    periods_of: dict[uuid.UUID, set[int]] = defaultdict(set)
    parties = await session.execute(
        select(ExchangeParty.member_id, Exchange.occurred_on)
        .join(Exchange, Exchange.id == ExchangeParty.exchange_id)
        .where(*counted)
        .distinct()
    )
    for member_id, day in parties:
        i = slot(day)
        active_in[i].add(member_id)
        periods_of[member_id].add(i)

    new_members = [0] * len(starts)
    cohorts: dict[int, list[uuid.UUID]] = defaultdict(list)
    joined = await session.execute(
        select(Member.id, Member.joined_at, Member.created_at).where(
            Member.community_id == community.id, Member.status != MemberStatus.pending.value
        )
    )
    for member_id, joined_at, created_at in joined:
        day = (joined_at or created_at).date()
        if since <= day <= until:
            i = slot(day)
            new_members[i] += 1
            cohorts[i].append(member_id)

    rows = [
        PeriodActivity(
            period=period_label(start, period),
            start=start,
            end=next_period(start, period) - timedelta(days=1),
            exchanges=exchanges[i],
            minutes=minutes[i],
            hours=round(minutes[i] / 60, 2),
            active_members=len(active_in[i]),
            new_members=new_members[i],
        )
        for i, start in enumerate(starts)
    ]
    retention = []
    for i in sorted(cohorts):
        members = cohorts[i]
        active = [
            sum(1 for m in members if i + k in periods_of.get(m, ()))
            for k in range(len(starts) - i)
        ]
        retention.append(
            Cohort(
                cohort=period_label(starts[i], period),
                members=len(members),
                active=active,
                retention=[a / len(members) for a in active],
            )
        )
    return ActivityReport(
        community_id=community.id,
        period=period,
        window=network.window_read(Window(since, until)),
        periods=rows,
        retention=retention,
    )


def activity_csv(report: ActivityReport, table: str) -> str:
    if table == "retention":
        return to_csv(
            ["cohort", "members", "periods_after_joining", "active", "retention"],
            (
                [c.cohort, c.members, k, active, _number(c.retention[k])]
                for c in report.retention
                for k, active in enumerate(c.active)
            ),
        )
    return to_csv(
        [
            "period",
            "start",
            "end",
            "exchanges",
            "minutes",
            "hours",
            "active_members",
            "new_members",
        ],
        (
            [
                p.period,
                p.start.isoformat(),
                p.end.isoformat(),
                p.exchanges,
                p.minutes,
                f"{p.hours:.2f}",
                p.active_members,
                p.new_members,
            ]
            for p in report.periods
        ),
    )


# --- co-production ------------------------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


async def coproduction(
    session: AsyncSession, cache: NetworkCache, community: Community, window: Window
) -> CoproductionReport:
    snap = await network.snapshot(session, cache, community.id, window)
    graph = snap.graph
    view = graph.view(GraphFilter())
    metrics = await network.view_metrics(cache, view)
    igraph_view = view.graph
    out_degree = igraph_view.outdegree()
    in_degree = igraph_view.indegree()
    members = [graph.members[b] for b in view.nodes]
    n = len(members)

    offering = set(
        await session.scalars(
            select(Listing.owner_member_id)
            .where(
                Listing.community_id == community.id,
                Listing.type == ListingType.offer.value,
                Listing.status != ListingStatus.closed.value,
            )
            .distinct()
        )
    )
    with_offer = sum(1 for m in members if m.id in offering)
    service_users = [
        pos for pos, m in enumerate(members) if m.kind == MemberKind.citizen and in_degree[pos] > 0
    ]
    users_who_gave = sum(1 for pos in service_users if out_degree[pos] > 0)

    categories = await _categories_given(session, community.id, window)
    category_names = await _category_list(session, community)

    settings = cache.settings
    betweenness, _plan = betweenness_of(
        view,
        work_limit=settings.betweenness_work_limit,
        min_pivots=settings.betweenness_min_pivots,
        confidence=settings.betweenness_confidence,
    )
    catalysts = {
        pos
        for pos, m in enumerate(members)
        if m.role in {"coordinator", "admin"} or m.kind == MemberKind.organization
    }
    total_betweenness = sum(betweenness)
    catalyst_betweenness = sum(betweenness[pos] for pos in catalysts)
    remaining = n - len(catalysts)
    largest_without = largest_weak_component(without(view, catalysts)) if remaining else 0
    share_without = _share(largest_without, remaining)
    shrink = (
        metrics.largest_component_share - share_without
        if metrics.largest_component_share is not None and share_without is not None
        else None
    )

    def indicator(
        key: str, label: str, value: float | None, unit: str, definition: str
    ) -> Indicator:
        return Indicator(key=key, label=label, value=value, unit=unit, definition=definition)

    principles = [
        Principle(
            principle="assets",
            title="People are assets, not passive recipients",
            indicators=[
                indicator(
                    "members_with_offer_share",
                    "Members offering something",
                    _share(with_offer, n),
                    "share",
                    "Members on the network with at least one offer listing that is not closed, "
                    "divided by all members on the network.",
                ),
                indicator(
                    "service_users_who_gave_share",
                    "Service users who have given",
                    _share(users_who_gave, len(service_users)),
                    "share",
                    "Citizens who received help in the window and also gave help in it, divided "
                    "by citizens who received help in the window.",
                ),
            ],
        ),
        Principle(
            principle="capabilities",
            title="Building on what people can do",
            indicators=[
                indicator(
                    "categories_given",
                    "Categories of help given",
                    len(categories),
                    "count",
                    "Distinct categories of the exchanges whose hours stand in the window.",
                ),
                indicator(
                    "categories_given_share",
                    "Share of the community's categories in use",
                    _share(
                        len({c.category for c in categories} & set(category_names)),
                        len(category_names),
                    ),
                    "share",
                    "Of the community's category list, the share with help given in the window.",
                ),
            ],
        ),
        Principle(
            principle="mutuality",
            title="Reciprocal relationships",
            indicators=[
                indicator(
                    "both_ways_share",
                    "Members who both gave and received",
                    metrics.both_ways_share,
                    "share",
                    "Members who gave to someone and received from someone in the window, "
                    "divided by all members on the network.",
                ),
                indicator(
                    "reciprocity",
                    "Reciprocated ties",
                    metrics.reciprocity,
                    "share",
                    "Directed ties A->B for which B->A also exists, divided by all ties "
                    "(networkx.reciprocity).",
                ),
                indicator(
                    "balance_gini",
                    "Inequality of balances",
                    metrics.balance_gini,
                    "index",
                    "Gini coefficient of members' current balances, normalised by the mean "
                    "absolute balance (Raffinetti et al. 2015); 0 when everyone is even, "
                    "towards 1 when a few hold the hours.",
                ),
            ],
        ),
        Principle(
            principle="networks",
            title="Peer support networks",
            indicators=[
                indicator(
                    "largest_component_share",
                    "Members in the largest connected group",
                    metrics.largest_component_share,
                    "share",
                    "Size of the largest weakly connected component divided by all members.",
                ),
                indicator(
                    "isolates",
                    "Members with no tie",
                    metrics.isolates,
                    "count",
                    "Members on the network with no exchange in the window.",
                ),
                indicator(
                    "average_clustering",
                    "Clustering",
                    metrics.average_clustering,
                    "index",
                    "Mean local clustering coefficient of the undirected simple graph, members "
                    "with fewer than two neighbours counting 0 "
                    "(networkx.average_clustering(G.to_undirected())).",
                ),
            ],
        ),
        Principle(
            principle="blurred_roles",
            title="Blurring the line between professionals and recipients",
            indicators=[
                indicator(
                    "cross_kind_ties_share",
                    "Ties across kinds",
                    metrics.cross_kind.share,
                    "share",
                    "Ties whose provider and receiver are of different kinds (citizen, "
                    "professional, organization), divided by all ties.",
                ),
                indicator(
                    "professional_citizen_ties_share",
                    "Professional-citizen ties",
                    metrics.cross_kind.by_pair["citizen-professional"].share,
                    "share",
                    "Ties between a professional and a citizen, either way, divided by all ties.",
                ),
                indicator(
                    "organization_citizen_ties_share",
                    "Organisation-citizen ties",
                    metrics.cross_kind.by_pair["citizen-organization"].share,
                    "share",
                    "Ties between an organisation and a citizen, either way, divided by all ties.",
                ),
                indicator(
                    "professionals_who_received_share",
                    "Professionals who received help",
                    metrics.professionals_received_share,
                    "share",
                    "Professionals who received help in the window divided by professionals.",
                ),
            ],
        ),
        Principle(
            principle="catalysts",
            title="Catalysts who make things happen",
            indicators=[
                indicator(
                    "catalyst_betweenness_share",
                    "Brokerage held by coordinators and organisations",
                    (catalyst_betweenness / total_betweenness) if total_betweenness else None,
                    "share",
                    "Sum of the betweenness centrality of coordinators, admins and "
                    "organisations divided by the sum over all members (see "
                    "docs/network.md for when betweenness is sampled).",
                ),
                indicator(
                    "largest_component_share_without_catalysts",
                    "Largest connected group without them",
                    share_without,
                    "share",
                    "Remove coordinators, admins and organisations: the largest weakly "
                    "connected component divided by the members left.",
                ),
                indicator(
                    "largest_component_shrink",
                    "How much the network relies on them",
                    shrink,
                    "share",
                    "largest_component_share minus "
                    "largest_component_share_without_catalysts: near 0 when the network holds "
                    "together on its own.",
                ),
            ],
        ),
    ]
    return CoproductionReport(
        community_id=community.id,
        window=network.window_read(window),
        computed_at=graph.computed_at,
        age_seconds=snap.age_seconds(),
        stale=snap.stale,
        principles=principles,
        categories=categories,
    )


async def _categories_given(
    session: AsyncSession, community_id: uuid.UUID, window: Window
) -> list[CategoryGiven]:
    counted = network.counted_exchanges(community_id, window)
    totals = await session.execute(
        select(Exchange.category, func.count(), func.sum(Exchange.total_minutes))
        .where(*counted)
        .group_by(Exchange.category)
    )
    givers = dict(
        (
            await session.execute(
                select(Exchange.category, func.count(distinct(ExchangeParty.member_id)))
                .join(ExchangeParty, ExchangeParty.exchange_id == Exchange.id)
                .where(*counted, ExchangeParty.role == PartyRole.provider.value)
                .group_by(Exchange.category)
            )
        ).all()
    )
    rows = [
        CategoryGiven(
            category=category,
            exchanges=int(count),
            minutes=int(minutes or 0),
            givers=int(givers.get(category, 0)),
        )
        for category, count, minutes in totals
    ]
    return sorted(rows, key=lambda c: (-c.minutes, c.category))


async def _category_list(session: AsyncSession, community: Community) -> list[str]:
    names = list(
        await session.scalars(select(Category.name).where(Category.community_id == community.id))
    )
    return names or list(DEFAULT_CATEGORIES)


def coproduction_csv(report: CoproductionReport) -> str:
    return to_csv(
        ["principle", "indicator", "label", "value", "unit", "definition"],
        (
            [p.principle, i.key, i.label, _number(i.value), i.unit, i.definition]
            for p in report.principles
            for i in p.indicators
        ),
    )


# --- CSV ----------------------------------------------------------------------------------


def _number(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.6f}"


def to_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_safe_cell(cell) for cell in row])
    return buffer.getvalue()


def _safe_cell(cell: object) -> object:
    """Text that a spreadsheet would run as a formula is prefixed with a quote."""
    if isinstance(cell, str) and cell[:1] in {"=", "+", "-", "@"}:
        try:
            float(cell)
        except ValueError:
            return "'" + cell
    return cell

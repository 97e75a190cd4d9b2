"""Support connections: load posted exchanges, keep snapshots, answer the network questions.

An exchange counts while its hours stand: status ``confirmed`` or ``disputed``, or ``resolved``
with resolution ``upheld``; never once reversed. Its providers and receivers become directed
ties provider -> receiver (see ``graph.pair_shares`` for group exchanges).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from anyio import to_thread
from sqlalchemy import ColumnElement, Select, String, and_, cast, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.functions import FunctionElement

from app.core.clock import utcnow
from app.core.errors import InvalidCursor
from app.core.ids import parse_id
from app.core.pagination import PageParams, decode_cursor, encode_cursor
from app.models import Account, Exchange, ExchangeParty, Listing, Member, Transaction
from app.models.exchanges import ExchangeStatus, ListingStatus, ListingType, PartyRole, Resolution
from app.models.identity import MemberStatus
from app.network import errors
from app.network.cache import NetworkCache, Snapshot
from app.network.graph import (
    GraphFilter,
    GraphView,
    MemberRow,
    SupportGraph,
    TieTotals,
    Window,
    compute_metrics,
    member_ref,
    pair_shares,
)
from app.network.schemas import (
    ConnectionRead,
    ConnectionsPage,
    ConnectionsSummary,
    EgoNetwork,
    FiltersRead,
    GraphEdge,
    GraphNode,
    MemberRef,
    NetworkMetrics,
    NetworkMetricsRead,
    PathMode,
    PathRead,
    PathStep,
    SuggestedListing,
    Suggestion,
    SuggestionsRead,
    WindowRead,
)

# A window may start up to a day after today (UTC) so that members ahead of UTC see "today".
FUTURE_GRACE = timedelta(days=1)
PROVIDER = PartyRole.provider.value


def make_window(since: date | None, until: date | None) -> Window:
    if since is not None and until is not None and since > until:
        raise errors.InvalidWindow(
            f"since ({since}) is after until ({until}): the window holds no days."
        )
    if since is not None and since > utcnow().date() + FUTURE_GRACE:
        raise errors.InvalidWindow(
            f"since ({since}) is in the future: no exchange can have happened in the window."
        )
    return Window(since=since, until=until)


def window_read(window: Window) -> WindowRead:
    return WindowRead(since=window.since, until=window.until)


def filters_read(filters: GraphFilter) -> FiltersRead:
    return FiltersRead.model_validate(
        {
            "kinds": sorted(filters.kinds) if filters.kinds is not None else None,
            "min_minutes": filters.min_minutes,
        }
    )


def make_filter(kinds: Sequence[str] | None, min_minutes: int) -> GraphFilter:
    return GraphFilter(kinds=frozenset(kinds) if kinds else None, min_minutes=min_minutes)


# --- loading ------------------------------------------------------------------------------


class unindexed(FunctionElement[Any]):  # noqa: N801 (used like a SQL function)
    """The column itself, which SQLite's planner may not look up through an index.

    Almost every exchange has no reversal, yet SQLite (which keeps no statistics unless told
    to ANALYZE) reads ``reversal_transaction_id IS NULL`` on that column's unique index as a
    lookup of one row, and starts every plan there: a member's connections then walked all
    100,000 exchanges of the benchmark community instead of the member's own. ``+column`` is
    SQLite's documented way to keep a term off an index; PostgreSQL plans from statistics and
    gets the plain column."""

    name = "unindexed"
    inherit_cache = True


@compiles(unindexed)
def _unindexed_column(element: unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))


def counted_exchanges(community_id: uuid.UUID, window: Window) -> list[ColumnElement[bool]]:
    """Exchanges whose hours stand, in ``community_id``, with a day of service in ``window``."""
    conditions: list[ColumnElement[bool]] = [
        Exchange.community_id == community_id,
        or_(
            Exchange.status.in_((ExchangeStatus.confirmed.value, ExchangeStatus.disputed.value)),
            and_(
                Exchange.status == ExchangeStatus.resolved.value,
                Exchange.resolution == Resolution.upheld.value,
            ),
        ),
        unindexed(Exchange.reversal_transaction_id).is_(None),
    ]
    if window.since is not None:
        conditions.append(Exchange.occurred_on >= window.since)
    if window.until is not None:
        conditions.append(Exchange.occurred_on <= window.until)
    return conditions


async def community_version(session: AsyncSession, community_id: uuid.UUID) -> str:
    """Changes whenever anything the graph shows may have changed (see cache.py)."""
    newest_transaction = await session.scalar(
        select(Transaction.id)
        .where(Transaction.community_id == community_id)
        .order_by(Transaction.id.desc())
        .limit(1)
    )
    members, updated = (
        await session.execute(
            select(func.count(Member.id), func.max(Member.updated_at)).where(
                Member.community_id == community_id
            )
        )
    ).one()
    return f"{newest_transaction}|{members}|{updated.isoformat() if updated else ''}"


def _joined_on(joined_at: datetime | None, created_at: datetime) -> date:
    return (joined_at or created_at).date()


def _id_text(column: Any) -> Any:
    """A member or exchange id as text, the same on both databases within one query
    (SQLite: 32 hex digits; PostgreSQL: the hyphenated form): a cheap dictionary key that
    sorts as the UUID does, read without building a UUID object per row."""
    return cast(column, String)


def _day_reader() -> Callable[[str], date]:
    """Days of service read as text (``YYYY-MM-DD`` on both databases), parsed once per
    distinct day: a community has a few hundred days and a hundred thousand ties."""
    days: dict[str, date] = {}

    def day(raw: str) -> date:
        parsed = days.get(raw)
        if parsed is None:
            parsed = days[raw] = date.fromisoformat(raw)
        return parsed

    return day


async def _member_rows(
    session: AsyncSession, community_id: uuid.UUID
) -> tuple[list[MemberRow], dict[str, int]]:
    """Every non-pending member in id order, and each one's position by id text."""
    connection = await session.connection()
    rows = await connection.execute(
        select(
            _id_text(Member.id).label("member"),
            Member.display_name,
            Member.kind,
            Member.role,
            Member.status,
            Member.joined_at,
            Member.created_at,
            Account.balance,
        )
        .outerjoin(Account, Account.member_id == Member.id)
        .where(Member.community_id == community_id, Member.status != MemberStatus.pending.value)
    )
    by_text = {row[0]: row for row in rows}
    members: list[MemberRow] = []
    position: dict[str, int] = {}
    for text in sorted(by_text):
        _, name, kind, role, status, joined_at, created_at, balance = by_text[text]
        position[text] = len(members)
        members.append(
            MemberRow(
                id=uuid.UUID(text),
                display_name=name,
                kind=kind,
                role=role,
                status=status,
                joined_on=_joined_on(joined_at, created_at),
                balance=balance or 0,
            )
        )
    return members, position


def _single_provider_pairs(counted: list[ColumnElement[bool]]) -> Select[Any]:
    """Exchanges with one provider (its minutes are the exchange's total): every receiver's
    minutes are that provider's, so the database sums the pairs. Nearly every exchange."""
    provider = aliased(ExchangeParty)
    receiver = aliased(ExchangeParty)
    return (
        select(
            _id_text(provider.member_id).label("provider"),
            _id_text(receiver.member_id).label("receiver"),
            func.sum(receiver.minutes).label("minutes"),
            func.count().label("exchanges"),
            cast(func.min(Exchange.occurred_on), String).label("first"),
            cast(func.max(Exchange.occurred_on), String).label("last"),
        )
        .join(
            provider,
            and_(
                provider.exchange_id == Exchange.id,
                provider.role == PartyRole.provider.value,
                provider.minutes == Exchange.total_minutes,
            ),
        )
        .join(
            receiver,
            and_(receiver.exchange_id == Exchange.id, receiver.role == PartyRole.receiver.value),
        )
        .where(*counted)
        .group_by(provider.member_id, receiver.member_id)
    )


def _shared_exchange_parties(counted: list[ColumnElement[bool]]) -> Select[Any]:
    """Every party of the exchanges with several providers, grouped by exchange: (exchange id,
    day, member id text, role, minutes)."""
    other = aliased(ExchangeParty)
    return (
        select(
            _id_text(Exchange.id).label("exchange"),
            cast(Exchange.occurred_on, String).label("day"),
            _id_text(ExchangeParty.member_id).label("member"),
            ExchangeParty.role,
            ExchangeParty.minutes,
        )
        .join(ExchangeParty, ExchangeParty.exchange_id == Exchange.id)
        .where(
            *counted,
            exists().where(
                other.exchange_id == Exchange.id,
                other.role == PartyRole.provider.value,
                other.minutes < Exchange.total_minutes,
            ),
        )
        .order_by(Exchange.id)
    )


def _shared_pairs(rows: Iterable[Any]) -> Iterator[tuple[str, str, int, Any]]:
    """(provider, receiver, minutes, day) of each pair of the exchanges in ``rows`` (see
    ``_shared_exchange_parties``), split by ``graph.pair_shares``."""
    current: str | None = None
    day: Any = None
    providers: list[tuple[str, int]] = []
    receivers: list[tuple[str, int]] = []
    for exchange_id, occurred_on, member_id, role, minutes in rows:
        if exchange_id != current:
            for giver, taker, share in pair_shares(providers, receivers):
                yield giver, taker, share, day
            current, day, providers, receivers = exchange_id, occurred_on, [], []
        (providers if role == PROVIDER else receivers).append((member_id, int(minutes)))
    for giver, taker, share in pair_shares(providers, receivers):
        yield giver, taker, share, day


async def _tie_totals(
    session: AsyncSession, community_id: uuid.UUID, window: Window, position: dict[str, int]
) -> TieTotals:
    """The community's ties between the members at ``position``, in two queries whose rows
    arrive as plain text and numbers (Core, no ORM rows, no UUID or date object per row)."""
    counted = counted_exchanges(community_id, window)
    connection = await session.connection()
    ties = TieTotals(len(position))
    size = ties.size
    totals = ties.ties
    day = _day_reader()

    def orphan(provider: int | None, receiver: int | None) -> None:
        if provider is not None:
            ties.orphans.add(provider)
        elif receiver is not None:
            ties.orphans.add(receiver)

    # The database has already summed these per pair: each pair arrives once.
    for giver, taker, minutes, count, first, last in await connection.execute(
        _single_provider_pairs(counted)
    ):
        provider = position.get(giver)
        receiver = position.get(taker)
        if provider is None or receiver is None:
            orphan(provider, receiver)
            continue
        totals[provider * size + receiver] = [int(minutes), int(count), day(first), day(last)]
    shared = await connection.execute(_shared_exchange_parties(counted))
    for giver, taker, minutes, occurred_on in _shared_pairs(shared):
        provider = position.get(giver)
        receiver = position.get(taker)
        if provider is None or receiver is None:
            orphan(provider, receiver)
            continue
        when = day(occurred_on)
        ties.add(provider, receiver, minutes, 1, when, when)
    return ties


async def build_support_graph(
    session: AsyncSession, community_id: uuid.UUID, window: Window, version: str
) -> SupportGraph:
    members, position = await _member_rows(session, community_id)
    ties = await _tie_totals(session, community_id, window, position)
    computed_at = utcnow()
    return await to_thread.run_sync(
        lambda: SupportGraph.build(
            community_id=community_id,
            window=window,
            version=version,
            computed_at=computed_at,
            members=members,
            ties=ties,
        )
    )


async def snapshot(
    session: AsyncSession, cache: NetworkCache, community_id: uuid.UUID, window: Window
) -> Snapshot:
    version = await community_version(session, community_id)
    return await cache.snapshot(
        (community_id, window),
        version,
        lambda: build_support_graph(session, community_id, window, version),
    )


def _freshness(snap: Snapshot) -> dict[str, Any]:
    return {
        "computed_at": snap.graph.computed_at,
        "age_seconds": snap.age_seconds(),
        "stale": snap.stale,
    }


async def view_metrics(cache: NetworkCache, view: GraphView) -> NetworkMetrics:
    if view.metrics is None:
        settings = cache.settings
        view.metrics = await to_thread.run_sync(
            lambda: compute_metrics(
                view,
                work_limit=settings.betweenness_work_limit,
                min_pivots=settings.betweenness_min_pivots,
                confidence=settings.betweenness_confidence,
            )
        )
    return view.metrics


# --- member view --------------------------------------------------------------------------


@dataclass
class _Tie:
    counterpart: uuid.UUID
    given: int = 0
    received: int = 0
    given_count: int = 0
    received_count: int = 0
    first: date | None = None
    last: date | None = None

    def touch(self, first: date, last: date) -> None:
        self.first = first if self.first is None else min(self.first, first)
        self.last = last if self.last is None else max(self.last, last)

    @property
    def total(self) -> int:
        return self.given + self.received


async def _ties_of(
    session: AsyncSession, member: Member, window: Window, filters: GraphFilter
) -> tuple[list[_Tie], dict[uuid.UUID, MemberRef]]:
    """The member's ties summed per counterpart and direction, and who each counterpart is.

    One query: every party of the member's counted exchanges with the party's name, kind and
    role (plain columns, no ORM objects), found through the index on
    ``exchange_parties.member_id``; each exchange is split as the graph splits it."""
    involved = select(ExchangeParty.exchange_id).where(ExchangeParty.member_id == member.id)
    rows = await session.execute(
        select(
            Exchange.id,
            Exchange.occurred_on,
            ExchangeParty.member_id,
            ExchangeParty.role,
            ExchangeParty.minutes,
            Member.display_name,
            Member.kind,
            Member.role,
        )
        .join(ExchangeParty, ExchangeParty.exchange_id == Exchange.id)
        .join(Member, Member.id == ExchangeParty.member_id)
        .where(*counted_exchanges(member.community_id, window), Exchange.id.in_(involved))
        .order_by(Exchange.id)
    )
    people: dict[uuid.UUID, MemberRef] = {}
    directed: dict[tuple[uuid.UUID, bool], list[Any]] = {}

    def add(exchange: list[tuple[uuid.UUID, str, int]], day: date) -> None:
        providers = [(who, minutes) for who, role, minutes in exchange if role == PROVIDER]
        receivers = [(who, minutes) for who, role, minutes in exchange if role != PROVIDER]
        for giver, taker, minutes in pair_shares(providers, receivers):
            gave = giver == member.id
            if not gave and taker != member.id:
                continue
            sums = directed.get((taker if gave else giver, gave))
            if sums is None:
                directed[(taker if gave else giver, gave)] = [minutes, 1, day, day]
            else:
                sums[0] += minutes
                sums[1] += 1
                sums[2] = min(sums[2], day)
                sums[3] = max(sums[3], day)

    current: uuid.UUID | None = None
    day: date | None = None
    parties: list[tuple[uuid.UUID, str, int]] = []
    for exchange_id, occurred_on, who, role, minutes, name, kind, member_role in rows:
        if exchange_id != current:
            if day is not None:
                add(parties, day)
            current, day, parties = exchange_id, occurred_on, []
        parties.append((who, role, minutes))
        if who not in people and who != member.id:
            people[who] = MemberRef.model_validate(
                {"member_id": who, "display_name": name, "kind": kind, "role": member_role}
            )
    if day is not None:
        add(parties, day)

    by_counterpart: dict[uuid.UUID, _Tie] = {}
    for (other, gave), (minutes, count, first, last) in directed.items():
        if minutes < filters.min_minutes:
            continue
        tie = by_counterpart.setdefault(other, _Tie(other))
        if gave:
            tie.given += minutes
            tie.given_count += count
        else:
            tie.received += minutes
            tie.received_count += count
        tie.touch(first, last)
    return list(by_counterpart.values()), people


async def _members_by_id(session: AsyncSession, ids: set[uuid.UUID]) -> dict[uuid.UUID, Member]:
    if not ids:
        return {}
    found = await session.scalars(select(Member).where(Member.id.in_(ids)))
    return {m.id: m for m in found}


def _ref(member: Member) -> MemberRef:
    return MemberRef.model_validate(
        {
            "member_id": member.id,
            "display_name": member.display_name,
            "kind": member.kind,
            "role": member.role,
        }
    )


def _connection(tie: _Tie, counterpart: MemberRef) -> ConnectionRead:
    assert tie.first is not None
    assert tie.last is not None
    larger = max(tie.given, tie.received)
    return ConnectionRead(
        member=counterpart,
        given_minutes=tie.given,
        received_minutes=tie.received,
        given_count=tie.given_count,
        received_count=tie.received_count,
        first_date=tie.first,
        last_date=tie.last,
        mutual=tie.given_count > 0 and tie.received_count > 0,
        reciprocity=min(tie.given, tie.received) / larger if larger else 0.0,
    )


async def member_connections(
    session: AsyncSession,
    member: Member,
    window: Window,
    filters: GraphFilter,
    page: PageParams,
) -> ConnectionsPage:
    """Everyone the member gave to or received from, strongest tie first."""
    ties, people = await _ties_of(session, member, window, filters)
    if filters.kinds is not None:
        ties = [t for t in ties if people[t.counterpart].kind in filters.kinds]
    ties.sort(key=lambda t: (-t.total, str(t.counterpart)))
    summary = ConnectionsSummary(
        gave_to=sum(1 for t in ties if t.given_count),
        received_from=sum(1 for t in ties if t.received_count),
        mutual_ties=sum(1 for t in ties if t.given_count and t.received_count),
        given_minutes=sum(t.given for t in ties),
        received_minutes=sum(t.received for t in ties),
    )
    start = 0
    if page.cursor is not None:
        values = decode_cursor(page.cursor)
        if len(values) != 2 or not isinstance(values[0], int) or not isinstance(values[1], str):
            raise InvalidCursor("The cursor is not one this server issued.")
        after = (-values[0], values[1])
        start = next(
            (i for i, t in enumerate(ties) if (-t.total, str(t.counterpart)) > after), len(ties)
        )
    chunk = ties[start : start + page.limit]
    next_cursor = None
    if start + page.limit < len(ties):
        last = chunk[-1]
        next_cursor = encode_cursor([last.total, str(last.counterpart)])
    return ConnectionsPage.model_validate(
        {
            "items": [_connection(t, people[t.counterpart]) for t in chunk],
            "next_cursor": next_cursor,
            "member_id": member.id,
            "window": window_read(window),
            "summary": summary,
        }
    )


def _graph_node(graph: SupportGraph, base: int, distance: int | None = None) -> GraphNode:
    member = graph.members[base]
    return GraphNode.model_validate(
        {
            "id": str(member.id),
            "display_name": member.display_name,
            "kind": member.kind,
            "role": member.role,
            "joined_on": member.joined_on,
            "distance": distance,
        }
    )


def _graph_edge(graph: SupportGraph, edge: int) -> GraphEdge:
    return GraphEdge(
        source=str(graph.members[graph.sources[edge]].id),
        target=str(graph.members[graph.targets[edge]].id),
        minutes=graph.minutes[edge],
        count=graph.counts[edge],
        first_date=graph.first[edge],
        last_date=graph.last[edge],
    )


async def ego_network(
    session: AsyncSession,
    cache: NetworkCache,
    member: Member,
    window: Window,
    filters: GraphFilter,
    depth: int,
    limit: int,
) -> EgoNetwork:
    """The member, everyone within ``depth`` ties of them (either direction), and the ties
    among those people. Closest first when ``limit`` cuts."""
    snap = await snapshot(session, cache, member.community_id, window)
    graph = snap.graph
    view = graph.view(filters)
    base = graph.index.get(member.id)
    centre = view.position.get(base) if base is not None else None
    header: dict[str, str | int | bool | None] = {
        "centre": str(member.id),
        "depth": depth,
        "computed_at": graph.computed_at.isoformat(),
        "stale": snap.stale,
    }
    if centre is None:
        # Not on the graph for this window and filter: the member alone.
        lone = GraphNode.model_validate(
            {
                "id": str(member.id),
                "display_name": member.display_name,
                "kind": member.kind,
                "role": member.role,
                "joined_on": _joined_on(member.joined_at, member.created_at),
                "distance": 0,
            }
        )
        return EgoNetwork(
            graph=header, nodes=[lone], edges=[], truncated=False, window=window_read(window)
        )
    distances = view.graph.distances(source=centre, mode="all")[0]
    reached = sorted(
        (
            (int(d), view.nodes[pos])
            for pos, d in enumerate(distances)
            if d is not None and not math.isinf(d) and d <= depth
        ),
        key=lambda pair: (pair[0], graph.members[pair[1]].id),
    )
    truncated = len(reached) > limit
    reached = reached[:limit]
    kept = {view.position[b] for _, b in reached}
    edges: list[GraphEdge] = []
    for pos in sorted(kept):
        for view_edge in view.graph.incident(pos, mode="out"):
            edge = view.edges[view_edge]
            if view.position[graph.targets[edge]] in kept:
                edges.append(_graph_edge(graph, edge))
    return EgoNetwork(
        graph=header,
        nodes=[_graph_node(graph, b, d) for d, b in reached],
        edges=edges,
        truncated=truncated,
        window=window_read(window),
    )


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def _matches(listing: Listing, categories: set[str], tags: set[str], topics: set[str]) -> list[str]:
    """Why ``listing`` matches: its category among ``categories`` or ``topics`` (skills or
    needs), or a tag among ``tags`` or ``topics``."""
    reasons: list[str] = []
    category = _normal(listing.category)
    if category in categories or category in topics:
        reasons.append(f"category:{listing.category}")
    for tag in listing.tags:
        if _normal(tag) in tags or _normal(tag) in topics:
            reasons.append(f"tag:{tag}")
    return reasons


async def suggestions(
    session: AsyncSession, cache: NetworkCache, member: Member, limit: int
) -> SuggestionsRead:
    """Open requests the member could answer and open offers that meet their needs, closest
    owner in the support network first, then the longest waiting."""
    own = list(
        await session.scalars(
            select(Listing).where(
                Listing.owner_member_id == member.id, Listing.status != ListingStatus.closed.value
            )
        )
    )

    def interests(kind: ListingType) -> tuple[set[str], set[str]]:
        mine = [x for x in own if x.type == kind.value]
        return {_normal(x.category) for x in mine}, {_normal(t) for x in mine for t in x.tags}

    offer_categories, offer_tags = interests(ListingType.offer)
    request_categories, request_tags = interests(ListingType.request)
    skills = {_normal(s) for s in member.skills}
    needs = {_normal(n) for n in member.needs}

    candidates = list(
        await session.scalars(
            select(Listing).where(
                Listing.community_id == member.community_id,
                Listing.status == ListingStatus.open.value,
                Listing.owner_member_id != member.id,
            )
        )
    )
    matched: list[tuple[str, Listing, list[str]]] = []
    for listing in candidates:
        if listing.type == ListingType.request.value:
            reasons = _matches(listing, offer_categories, offer_tags, skills)
            reason = "request_you_could_answer"
        else:
            reasons = _matches(listing, request_categories, request_tags, needs)
            reason = "offer_for_your_need"
        if reasons:
            matched.append((reason, listing, reasons))

    owners = await _members_by_id(session, {x.owner_member_id for _, x, _ in matched})
    matched = [m for m in matched if owners[m[1].owner_member_id].status == MemberStatus.active]

    snap = await snapshot(session, cache, member.community_id, Window())
    graph = snap.graph
    view = graph.view(GraphFilter())
    hops: dict[uuid.UUID, int] = {}
    base = graph.index.get(member.id)
    if base is not None and matched:
        row = view.graph.distances(source=base, mode="all")[0]
        hops = {graph.members[i].id: int(d) for i, d in enumerate(row) if not math.isinf(d)}

    now = utcnow()
    ranked = sorted(
        matched,
        key=lambda m: (
            hops.get(m[1].owner_member_id, math.inf),
            m[1].created_at,
            m[1].id,
        ),
    )[:limit]
    return SuggestionsRead(
        member_id=member.id,
        items=[
            Suggestion(
                reason=reason,
                listing=SuggestedListing.model_validate(
                    {
                        "id": listing.id,
                        "type": listing.type,
                        "title": listing.title,
                        "category": listing.category,
                        "tags": list(listing.tags),
                        "owner": _ref(owners[listing.owner_member_id]),
                        "created_at": listing.created_at,
                    }
                ),
                matched_on=reasons,
                distance=hops.get(listing.owner_member_id),
                waiting_days=max(0, (now - listing.created_at).days),
            )
            for reason, listing, reasons in ranked
        ],
    )


# --- community view -----------------------------------------------------------------------


async def community_metrics(
    session: AsyncSession,
    cache: NetworkCache,
    community_id: uuid.UUID,
    window: Window,
    filters: GraphFilter,
) -> NetworkMetricsRead:
    snap = await snapshot(session, cache, community_id, window)
    metrics = await view_metrics(cache, snap.graph.view(filters))
    return NetworkMetricsRead(
        **_freshness(snap),
        community_id=community_id,
        window=window_read(window),
        filters=filters_read(filters),
        metrics=metrics,
    )


async def _community_member(
    session: AsyncSession, community_id: uuid.UUID, raw_id: str, label: str
) -> Member:
    parsed = parse_id(raw_id)
    member = await session.get(Member, parsed) if parsed else None
    if member is None or member.community_id != community_id:
        raise errors.MemberNotInCommunity(
            f"{label}: no member of this community has id {raw_id!r}."
        )
    return member


async def support_path(
    session: AsyncSession,
    cache: NetworkCache,
    community_id: uuid.UUID,
    raw_from: str,
    raw_to: str,
    mode: PathMode,
    window: Window,
    filters: GraphFilter,
) -> PathRead:
    """The shortest chain of support from one member to another (fewest ties). Directed mode
    follows help as it flowed: from gave to the next, who gave to the next, ... to ``to``."""
    start = await _community_member(session, community_id, raw_from, "from")
    end = await _community_member(session, community_id, raw_to, "to")
    snap = await snapshot(session, cache, community_id, window)
    graph = snap.graph
    view = graph.view(filters)

    def answer(hops: int | None, steps: list[PathStep], reason: str | None) -> PathRead:
        return PathRead(
            **_freshness(snap),
            community_id=community_id,
            mode=mode,
            from_member_id=start.id,
            to_member_id=end.id,
            hops=hops,
            path=steps,
            reason=reason,
            window=window_read(window),
        )

    positions: list[int] = []
    for member in (start, end):
        base = graph.index.get(member.id)
        position = view.position.get(base) if base is not None else None
        if position is None:
            return answer(
                None,
                [],
                f"{member.display_name} is not on the support network for this window and "
                "filter (no ties, not active, or filtered out).",
            )
        positions.append(position)
    source, target = positions
    igraph_mode = "out" if mode == PathMode.directed else "all"
    distance = view.graph.distances(source=source, target=target, mode=igraph_mode)[0][0]
    if math.isinf(distance):
        if mode == PathMode.directed:
            reason = (
                f"No chain of support runs from {start.display_name} to {end.display_name} "
                "in the direction help flowed; try mode=undirected."
            )
        else:
            reason = (
                f"{start.display_name} and {end.display_name} are in separate parts of the network."
            )
        return answer(None, [], reason)
    route = view.graph.get_shortest_path(source, to=target, mode=igraph_mode)
    bases = [view.nodes[pos] for pos in route]

    def tie_minutes(a: int, b: int) -> int:
        found = view.graph.get_eid(a, b, directed=True, error=False)
        return graph.minutes[view.edges[found]] if found >= 0 else 0

    steps = []
    for i, b in enumerate(bases):
        minutes = None
        if i + 1 < len(route):
            here, there = route[i], route[i + 1]
            minutes = tie_minutes(here, there)
            if mode == PathMode.undirected:
                minutes += tie_minutes(there, here)
        steps.append(PathStep(member=member_ref(graph.members[b]), minutes_to_next=minutes))
    return answer(len(route) - 1, steps, None)


async def graph_for_export(
    session: AsyncSession,
    cache: NetworkCache,
    community_id: uuid.UUID,
    window: Window,
    filters: GraphFilter,
) -> tuple[Snapshot, GraphView]:
    snap = await snapshot(session, cache, community_id, window)
    return snap, snap.graph.view(filters)

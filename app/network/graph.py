"""The support graph of one community over one date window, and the figures measured on it.

Pure computation, no database: ``service.py`` loads the rows, this module aggregates them into
directed ties provider -> receiver and measures the graph with python-igraph (C core). Every
figure is defined so that NetworkX computes the same number (the tests hold us to it).
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

import igraph

from app.models.identity import MemberKind
from app.network.schemas import (
    BetweennessMethod,
    Broker,
    CrossKindTies,
    DegreeSummary,
    KindPairTies,
    MemberRef,
    NetworkMetrics,
)

TOP_BROKERS = 10
CATALYST_ROLES = frozenset({"coordinator", "admin"})


@dataclass(frozen=True)
class Window:
    """Days of service counted, both ends inclusive; ``None`` leaves that end open."""

    since: date | None = None
    until: date | None = None


@dataclass(frozen=True)
class GraphFilter:
    kinds: frozenset[str] | None = None  # None: every kind
    min_minutes: int = 0

    @property
    def is_identity(self) -> bool:
        return self.kinds is None and self.min_minutes <= 0


# A member as the loader knows them while splitting an exchange: their id (a UUID, or the
# id's text as the database returns it, which sorts the same way) or their position on the
# graph's member list.
MemberKey = TypeVar("MemberKey", uuid.UUID, str, int)


def pair_shares(
    providers: Sequence[tuple[MemberKey, int]], receivers: Sequence[tuple[MemberKey, int]]
) -> list[tuple[MemberKey, MemberKey, int]]:
    """Split one exchange into provider -> receiver pairs.

    A pair gets the receiver's minutes times the provider's fraction of all provided minutes.
    Rounding (largest remainder, per receiver): each pair gets the floor of its exact share;
    the minutes left over go one each to the pairs with the largest fractional remainders,
    ties to the lower provider id. So a receiver's pairs always add up to exactly the minutes
    they received. A pair whose share rounds to 0 is still a tie (it counts the exchange).
    """
    ordered = sorted(providers, key=lambda p: p[0])
    total = sum(minutes for _, minutes in ordered)
    pairs: list[tuple[MemberKey, MemberKey, int]] = []
    for receiver, received in receivers:
        if len(ordered) == 1:
            pairs.append((ordered[0][0], receiver, received))
            continue
        exact = [received * minutes for _, minutes in ordered]
        shares = [value // total for value in exact]
        leftover = received - sum(shares)
        by_remainder = sorted(range(len(ordered)), key=lambda i: (-(exact[i] % total), i))
        for i in by_remainder[:leftover]:
            shares[i] += 1
        pairs.extend((ordered[i][0], receiver, shares[i]) for i in range(len(ordered)))
    return pairs


class TieTotals:
    """Directed ties between members at positions ``0..size-1`` of a member list: minutes,
    exchanges, first and last day.

    A tie is keyed by ``provider * size + receiver``, one int: sorting 100,000 int keys takes
    milliseconds where sorting pairs (or pairs of UUIDs) took a large part of a cold build,
    and the sorted keys order the ties by (provider, receiver) all the same.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.ties: dict[int, list[Any]] = {}
        # Members with a tie to someone who is not on the list (a pending member, or a party
        # from another community): the tie is not counted, but they count as tied.
        self.orphans: set[int] = set()

    def add(
        self,
        provider: int,
        receiver: int,
        minutes: int,
        count: int,
        first: date,
        last: date,
    ) -> None:
        key = provider * self.size + receiver
        tie = self.ties.get(key)
        if tie is None:
            self.ties[key] = [minutes, count, first, last]
            return
        tie[0] += minutes
        tie[1] += count
        if first < tie[2]:
            tie[2] = first
        if last > tie[3]:
            tie[3] = last


@dataclass(frozen=True)
class MemberRow:
    id: uuid.UUID
    display_name: str
    kind: str
    role: str
    status: str
    joined_on: date
    balance: int


@dataclass
class GraphView:
    """The graph after a kind filter (nodes) and a minimum-minutes filter (ties)."""

    base: SupportGraph
    nodes: list[int]  # indices into base, ascending
    edges: list[int]  # indices into base's ties
    graph: Any  # igraph.Graph over view positions 0..len(nodes)-1
    position: dict[int, int]  # base index -> view position
    metrics: NetworkMetrics | None = None
    betweenness: tuple[list[float], BetweennessPlan] | None = None


@dataclass
class SupportGraph:
    """Every member node and every aggregated tie of one community in one window."""

    community_id: uuid.UUID
    window: Window
    version: str
    computed_at: datetime
    members: list[MemberRow]
    index: dict[uuid.UUID, int]
    sources: list[int]
    targets: list[int]
    minutes: list[int]
    counts: list[int]
    first: list[date]
    last: list[date]
    graph: Any  # igraph.Graph, directed, vertex i = members[i]
    views: dict[GraphFilter, GraphView] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        community_id: uuid.UUID,
        window: Window,
        version: str,
        computed_at: datetime,
        members: Sequence[MemberRow],
        ties: TieTotals,
    ) -> SupportGraph:
        """Nodes: active members who had joined by the window's end, and anyone with a tie.

        ``members`` are in id order and ``ties`` refer to them by position in that list."""
        size = ties.size
        keys = sorted(ties.ties)  # (provider, receiver) order: see TieTotals
        totals = [ties.ties[key] for key in keys]
        providers = [key // size for key in keys]
        receivers = [key % size for key in keys]
        tied = set(ties.orphans)
        tied.update(providers)
        tied.update(receivers)
        until = window.until
        kept_positions = [
            i
            for i, m in enumerate(members)
            if i in tied or (m.status == "active" and (until is None or m.joined_on <= until))
        ]
        kept = [members[i] for i in kept_positions]
        renumber = [-1] * len(members)
        for new, old in enumerate(kept_positions):
            renumber[old] = new
        sources = [renumber[p] for p in providers]
        targets = [renumber[r] for r in receivers]
        minutes = [tie[0] for tie in totals]
        counts = [tie[1] for tie in totals]
        first = [tie[2] for tie in totals]
        last = [tie[3] for tie in totals]
        graph = igraph.Graph(
            n=len(kept), edges=list(zip(sources, targets, strict=True)), directed=True
        )
        return cls(
            community_id=community_id,
            window=window,
            version=version,
            computed_at=computed_at,
            members=kept,
            index={m.id: i for i, m in enumerate(kept)},
            sources=sources,
            targets=targets,
            minutes=minutes,
            counts=counts,
            first=first,
            last=last,
            graph=graph,
        )

    def started_on(self) -> list[date]:
        """Each node's first day on the graph: joining, or its first tie if that is earlier."""
        started = [m.joined_on for m in self.members]
        for s, t, day in zip(self.sources, self.targets, self.first, strict=True):
            if day < started[s]:
                started[s] = day
            if day < started[t]:
                started[t] = day
        return started

    def view(self, filters: GraphFilter) -> GraphView:
        cached = self.views.get(filters)
        if cached is not None:
            return cached
        if filters.is_identity:
            nodes = list(range(len(self.members)))
            edges = list(range(len(self.sources)))
            view = GraphView(self, nodes, edges, self.graph, {i: i for i in nodes})
        else:
            kinds = filters.kinds
            nodes = [i for i, m in enumerate(self.members) if kinds is None or m.kind in kinds]
            position = {base: pos for pos, base in enumerate(nodes)}
            edges = [
                e
                for e in range(len(self.sources))
                if self.minutes[e] >= filters.min_minutes
                and self.sources[e] in position
                and self.targets[e] in position
            ]
            graph = igraph.Graph(
                n=len(nodes),
                edges=[(position[self.sources[e]], position[self.targets[e]]) for e in edges],
                directed=True,
            )
            view = GraphView(self, nodes, edges, graph, position)
        self.views[filters] = view
        return view


# --- figures ------------------------------------------------------------------------------


def ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def balance_gini(balances: Sequence[int]) -> float | None:
    """Gini of signed balances (Raffinetti, Siletti & Vernizzi 2015): the mean absolute
    difference over twice the mean *absolute* balance, so it stays within [0, 1] although
    balances are negative as often as positive. All balances equal: 0."""
    n = len(balances)
    if n == 0:
        return None
    ordered = sorted(balances)
    absolute = sum(abs(b) for b in ordered)
    if absolute == 0:
        return 0.0
    # sum over i<j of (x_j - x_i) for sorted x, doubled for the ordered pairs.
    pair_differences = 2 * sum((2 * i - n + 1) * x for i, x in enumerate(ordered))
    return pair_differences / (2 * n * absolute)


def nearest_rank(sorted_values: Sequence[int], fraction: float) -> int:
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def degree_summary(degrees: Sequence[int]) -> DegreeSummary | None:
    if not degrees:
        return None
    ordered = sorted(degrees)
    return DegreeSummary(
        min=ordered[0],
        median=float(statistics.median(ordered)),
        mean=sum(ordered) / len(ordered),
        max=ordered[-1],
        p90=nearest_rank(ordered, 0.9),
    )


@dataclass(frozen=True)
class BetweennessPlan:
    """How betweenness is computed for a graph of ``n`` members and ``m`` ties.

    Exact (Brandes) while n * m <= ``work_limit``. Above that, k = max(min_pivots,
    ceil(work_limit / m)) source pivots are drawn without replacement (seeded, so a snapshot
    always gives the same figures) and each member's dependency sum is scaled by n / k, the
    unbiased estimator of Brandes & Pich (2007). Every sampled term lies in [0, n / (n - 1)]
    after normalisation, so by Hoeffding's inequality and a union bound over the n members,
    all estimates are within ``max_error`` = n/(n-1) * sqrt(ln(2n / (1 - confidence)) / (2k))
    of the exact value at once, with probability ``confidence``.
    """

    pivots: list[int] | None  # None: exact
    max_error: float

    @classmethod
    def for_graph(
        cls, n: int, m: int, *, work_limit: int, min_pivots: int, confidence: float, seed: str
    ) -> BetweennessPlan:
        if n < 3 or n * m <= work_limit:
            return cls(pivots=None, max_error=0.0)
        k = max(min_pivots, math.ceil(work_limit / max(m, 1)))
        if k >= n:
            return cls(pivots=None, max_error=0.0)
        # Seeded, not secret: the same snapshot must pick the same pivots.
        rng = random.Random(  # noqa: S311
            int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")
        )
        pivots = sorted(rng.sample(range(n), k))
        bound = n / (n - 1) * math.sqrt(math.log(2 * n / (1 - confidence)) / (2 * k))
        return cls(pivots=pivots, max_error=bound)


def normalised_betweenness(graph: Any, plan: BetweennessPlan) -> list[float]:
    n = graph.vcount()
    if n < 3 or graph.ecount() == 0:
        return [0.0] * n
    scale = 1.0 / ((n - 1) * (n - 2))
    if plan.pivots is None:
        raw = graph.betweenness(directed=True)
    else:
        raw = graph.betweenness(directed=True, sources=plan.pivots)
        scale *= n / len(plan.pivots)
    return [float(value) * scale for value in raw]


def _kind_pair(a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"{first}-{second}"


CROSS_KIND_PAIRS = tuple(
    _kind_pair(a.value, b.value)
    for i, a in enumerate(MemberKind)
    for b in list(MemberKind)[i + 1 :]
)


def member_ref(member: MemberRow) -> MemberRef:
    return MemberRef.model_validate(
        {
            "member_id": member.id,
            "display_name": member.display_name,
            "kind": member.kind,
            "role": member.role,
        }
    )


def largest_weak_component(graph: Any) -> int:
    if graph.vcount() == 0:
        return 0
    return int(max(graph.connected_components(mode="weak").sizes()))


def compute_metrics(
    view: GraphView, *, work_limit: int, min_pivots: int, confidence: float
) -> NetworkMetrics:
    base = view.base
    graph = view.graph
    n = graph.vcount()
    m = graph.ecount()
    members = [base.members[i] for i in view.nodes]

    out_degree = graph.outdegree()
    in_degree = graph.indegree()
    degrees = [o + i for o, i in zip(out_degree, in_degree, strict=True)]
    active = sum(1 for d in degrees if d > 0)
    both = sum(1 for o, i in zip(out_degree, in_degree, strict=True) if o > 0 and i > 0)

    # Ties are distinct ordered pairs without loops, so the dyad census counts pairs: mutual
    # (a tie each way), asymmetric (one way only) and unconnected.
    census = graph.dyad_census()
    mutual_pairs = int(census[0])
    reciprocated = 2 * mutual_pairs
    connected_pairs = mutual_pairs + int(census[1])

    weak = graph.connected_components(mode="weak")
    strong = graph.connected_components(mode="strong")
    largest = int(max(weak.sizes())) if n else 0

    simple = graph.as_undirected(mode="collapse")
    clustering = float(simple.transitivity_avglocal_undirected(mode="zero")) if n else 0.0
    if math.isnan(clustering):
        clustering = 0.0

    betweenness, plan = betweenness_of(
        view, work_limit=work_limit, min_pivots=min_pivots, confidence=confidence
    )
    ranked = sorted(
        (pos for pos in range(n) if betweenness[pos] > 0),
        key=lambda pos: (-betweenness[pos], members[pos].id),
    )[:TOP_BROKERS]
    brokers = [
        Broker(**member_ref(members[pos]).model_dump(), betweenness=betweenness[pos])
        for pos in ranked
    ]

    kinds = [member.kind for member in base.members]
    mixed: Counter[tuple[str, str]] = Counter()
    sources, targets = base.sources, base.targets
    for e in view.edges:
        a = kinds[sources[e]]
        b = kinds[targets[e]]
        if a != b:
            mixed[(a, b)] += 1
    by_pair = dict.fromkeys(CROSS_KIND_PAIRS, 0)
    for (a, b), ties in mixed.items():
        by_pair[_kind_pair(a, b)] += ties
    cross = sum(by_pair.values())

    professionals = [
        pos for pos, member in enumerate(members) if member.kind == MemberKind.professional
    ]
    professionals_received = sum(1 for pos in professionals if in_degree[pos] > 0)

    return NetworkMetrics(
        members=n,
        active_members=active,
        edges=m,
        minutes=sum(base.minutes[e] for e in view.edges),
        density=m / (n * (n - 1)) if n > 1 else 0.0,
        reciprocity=ratio(reciprocated, m),
        mutual_dyad_share=ratio(mutual_pairs, connected_pairs),
        gave_and_received=both,
        both_ways_share=ratio(both, n),
        weak_components=len(weak),
        strong_components=len(strong),
        largest_component=largest,
        largest_component_share=ratio(largest, n),
        isolates=n - active,
        average_clustering=clustering,
        degree=degree_summary(degrees),
        balance_gini=balance_gini([member.balance for member in members]),
        top_brokers=brokers,
        betweenness=BetweennessMethod(
            method="exact" if plan.pivots is None else "sampled",
            pivots=n if plan.pivots is None else len(plan.pivots),
            max_error=plan.max_error,
            confidence=1.0 if plan.pivots is None else confidence,
        ),
        cross_kind=CrossKindTies(
            ties=cross,
            share=ratio(cross, m),
            by_pair={
                pair: KindPairTies(ties=ties, share=ratio(ties, m))
                for pair, ties in by_pair.items()
            },
        ),
        professionals=len(professionals),
        professionals_who_received=professionals_received,
        professionals_received_share=ratio(professionals_received, len(professionals)),
    )


def betweenness_of(
    view: GraphView, *, work_limit: int, min_pivots: int, confidence: float
) -> tuple[list[float], BetweennessPlan]:
    """Normalised betweenness of every node of ``view`` (by view position), and the plan."""
    if view.betweenness is not None:
        return view.betweenness
    base = view.base
    plan = BetweennessPlan.for_graph(
        view.graph.vcount(),
        view.graph.ecount(),
        work_limit=work_limit,
        min_pivots=min_pivots,
        confidence=confidence,
        seed=f"{base.community_id}:{base.version}:{base.window}",
    )
    view.betweenness = (normalised_betweenness(view.graph, plan), plan)
    return view.betweenness


def without(view: GraphView, removed: set[int]) -> Any:
    """The view's graph with the members at ``removed`` positions taken out."""
    keep = [pos for pos in range(view.graph.vcount()) if pos not in removed]
    return view.graph.induced_subgraph(keep)


def distances_from(view: GraphView, position: int, mode: str) -> list[float]:
    return [float(d) for d in view.graph.distances(source=position, mode=mode)[0]]

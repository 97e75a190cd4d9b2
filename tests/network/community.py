"""Generated communities, written straight into the tables, and the NetworkX reference.

The reference re-derives the support ties from the generated exchanges with its own reading of
the rules (counted statuses, largest-remainder group shares) and measures them with NetworkX,
so the service is checked against an independent computation, figure by figure.
"""

from __future__ import annotations

import math
import random
import statistics
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any, cast

import networkx as nx
from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.ids import new_id
from app.models import Account, Exchange, ExchangeParty, Member

COUNTED = {"confirmed", "disputed"}
CATEGORIES = ("companionship", "transport", "gardening", "shopping", "IT help", "teaching")


@dataclass
class GenMember:
    id: uuid.UUID
    name: str
    kind: str
    role: str
    status: str
    joined_on: date
    balance: int


@dataclass
class GenExchange:
    id: uuid.UUID
    status: str
    resolution: str | None
    occurred_on: date
    category: str
    providers: list[tuple[uuid.UUID, int]]
    receivers: list[tuple[uuid.UUID, int]]
    fund_minutes: int = 0

    @property
    def counted(self) -> bool:
        return self.status in COUNTED or (self.status == "resolved" and self.resolution == "upheld")


@dataclass
class GenCommunity:
    community_id: uuid.UUID
    members: list[GenMember]
    exchanges: list[GenExchange] = field(default_factory=list)


def generate(
    community_id: uuid.UUID,
    *,
    members: int,
    exchanges: int,
    seed: int = 7,
    start: date | None = None,
    days: int = 720,
) -> GenCommunity:
    """80% of exchanges come from 20% of the active members; 30% of members never exchange;
    7% organisations, 10% professionals; a few coordinators; some group exchanges; a spread
    of statuses of which only confirmed, disputed and upheld count."""
    rng = random.Random(seed)
    start = start or date.today() - timedelta(days=days)
    people: list[GenMember] = []
    for i in range(members):
        roll = rng.random()
        kind = "organization" if roll < 0.07 else "professional" if roll < 0.17 else "citizen"
        role = "coordinator" if rng.random() < 0.02 else "member"
        status = rng.choices(["active", "left", "suspended", "pending"], [94, 3, 1, 2])[0]
        people.append(
            GenMember(
                id=new_id(),
                name=f"Member {i}",
                kind=kind,
                role=role,
                status=status,
                joined_on=start + timedelta(days=rng.randrange(days)),
                balance=0,
            )
        )
    able = [m for m in people if m.status != "pending"]
    rng.shuffle(able)
    active = able[: max(2, int(len(able) * 0.7))]
    heavy = active[: max(2, len(active) // 5)]
    community = GenCommunity(community_id, people)
    by_id = {m.id: m for m in people}
    statuses = ["confirmed"] * 80 + ["disputed"] * 5 + ["resolved"] * 8 + ["proposed"] * 3
    statuses += ["rejected"] * 2 + ["cancelled"] * 2
    for _ in range(exchanges):
        pool_giver = heavy if rng.random() < 0.8 else active
        shape = rng.random()
        if shape < 0.85:
            giver, taker = rng.choice(pool_giver), rng.choice(active)
            while taker.id == giver.id:
                taker = rng.choice(active)
            minutes = rng.choice([15, 30, 45, 60, 90, 120, 180])
            providers = [(giver.id, minutes)]
            receivers = [(taker.id, minutes)]
            fund = 0
        elif shape < 0.93:  # one provider, an equal split between several receivers
            group = rng.sample(active, rng.randint(3, 6))
            giver, takers = group[0], group[1:]
            minutes = rng.choice([40, 60, 90, 100])
            share, fund = divmod(minutes, len(takers))
            providers = [(giver.id, minutes)]
            receivers = [(t.id, share) for t in takers]
        else:  # several providers, explicit minutes
            group = rng.sample(active, rng.randint(3, 5))
            cut = rng.randint(2, len(group) - 1)
            givers, takers = group[:cut], group[cut:]
            providers = [(g.id, rng.choice([10, 20, 25, 35, 50])) for g in givers]
            total = sum(m for _, m in providers)
            receivers = _split(rng, total, [t.id for t in takers])
            fund = 0
        status = rng.choice(statuses)
        resolution = rng.choice(["upheld", "reversed"]) if status == "resolved" else None
        exchange = GenExchange(
            id=new_id(),
            status=status,
            resolution=resolution,
            occurred_on=start + timedelta(days=rng.randrange(days)),
            category=rng.choice(CATEGORIES),
            providers=providers,
            receivers=receivers,
            fund_minutes=fund,
        )
        community.exchanges.append(exchange)
        if exchange.counted:
            for member_id, m in providers:
                by_id[member_id].balance += m
            for member_id, m in receivers:
                by_id[member_id].balance -= m
    return community


def _split(rng: random.Random, total: int, takers: list[uuid.UUID]) -> list[tuple[uuid.UUID, int]]:
    cuts = sorted(rng.sample(range(1, total), len(takers) - 1))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    return list(zip(takers, sizes, strict=True))


async def insert_community(
    sessionmaker: async_sessionmaker[AsyncSession], community: GenCommunity, batch: int = 5000
) -> None:
    """Rows straight into the tables (no ledger postings: the network reads exchanges, and
    balances are written onto the accounts so the balance Gini has something to measure)."""

    def batches(rows: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
        for i in range(0, len(rows), batch):
            yield rows[i : i + batch]

    member_rows = [
        {
            "id": m.id,
            "community_id": community.community_id,
            "display_name": m.name,
            "kind": m.kind,
            "role": m.role,
            "status": m.status,
            "joined_at": datetime(m.joined_on.year, m.joined_on.month, m.joined_on.day, tzinfo=UTC),
            "skills": [],
            "needs": [],
        }
        for m in community.members
    ]
    account_rows = [
        {
            "community_id": community.community_id,
            "member_id": m.id,
            "kind": "member",
            "name": m.name,
            "balance": m.balance,
            "earned_total": max(m.balance, 0),
            "spent_total": max(-m.balance, 0),
        }
        for m in community.members
    ]
    exchange_rows: list[dict[str, Any]] = []
    party_rows: list[dict[str, Any]] = []
    for x in community.exchanges:
        exchange_rows.append(
            {
                "id": x.id,
                "community_id": community.community_id,
                "status": x.status,
                "resolution": x.resolution,
                "description": "generated",
                "category": x.category,
                "occurred_on": x.occurred_on,
                "split": "explicit",
                "total_minutes": sum(m for _, m in x.providers),
                "fund_minutes": x.fund_minutes,
            }
        )
        for role, parties in (("provider", x.providers), ("receiver", x.receivers)):
            party_rows.extend(
                {"exchange_id": x.id, "member_id": member_id, "role": role, "minutes": minutes}
                for member_id, minutes in parties
            )
    # Core executemany (not the ORM's bulk path): the rows go to the driver as they are, with
    # only the columns' own defaults filled in.
    async with sessionmaker() as session, session.begin():
        connection = await session.connection()
        for model, rows in (
            (Member, member_rows),
            (Account, account_rows),
            (Exchange, exchange_rows),
            (ExchangeParty, party_rows),
        ):
            table = cast(Table, model.__table__)
            for chunk in batches(rows):
                await connection.execute(insert(table), chunk)


# --- the reference ------------------------------------------------------------------------


def reference_pairs(exchange: GenExchange) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """The documented rule, computed with exact fractions."""
    total = sum(m for _, m in exchange.providers)
    providers = sorted(exchange.providers)
    pairs: list[tuple[uuid.UUID, uuid.UUID, int]] = []
    for receiver, received in exchange.receivers:
        exact = [Fraction(received * m, total) for _, m in providers]
        shares = [math.floor(e) for e in exact]
        leftover = received - sum(shares)
        order = sorted(range(len(providers)), key=lambda i: (-(exact[i] - shares[i]), i))
        for i in order[:leftover]:
            shares[i] += 1
        pairs.extend((providers[i][0], receiver, shares[i]) for i in range(len(providers)))
    return pairs


def reference_graph(
    community: GenCommunity,
    *,
    since: date | None = None,
    until: date | None = None,
    kinds: set[str] | None = None,
    min_minutes: int = 0,
) -> nx.DiGraph:
    ties: dict[tuple[uuid.UUID, uuid.UUID], dict[str, Any]] = {}
    for x in community.exchanges:
        if not x.counted:
            continue
        if (since and x.occurred_on < since) or (until and x.occurred_on > until):
            continue
        for giver, taker, minutes in reference_pairs(x):
            tie = ties.setdefault(
                (giver, taker),
                {"minutes": 0, "count": 0, "first": x.occurred_on, "last": x.occurred_on},
            )
            tie["minutes"] += minutes
            tie["count"] += 1
            tie["first"] = min(tie["first"], x.occurred_on)
            tie["last"] = max(tie["last"], x.occurred_on)
    tied = {p for pair in ties for p in pair}
    graph = nx.DiGraph()
    for m in community.members:
        on_graph = m.id in tied or (
            m.status == "active" and (until is None or m.joined_on <= until)
        )
        if on_graph and (kinds is None or m.kind in kinds):
            graph.add_node(str(m.id), kind=m.kind, role=m.role, balance=m.balance)
    for (giver, taker), tie in ties.items():
        if tie["minutes"] >= min_minutes and str(giver) in graph and str(taker) in graph:
            graph.add_edge(str(giver), str(taker), **tie)
    return graph


def gini(values: list[int]) -> float | None:
    if not values:
        return None
    absolute = sum(abs(v) for v in values)
    if absolute == 0:
        return 0.0
    return sum(abs(a - b) for a in values for b in values) / (2 * len(values) * absolute)


def reference_metrics(graph: nx.DiGraph) -> dict[str, Any]:
    n, m = graph.number_of_nodes(), graph.number_of_edges()
    degrees = sorted(d for _, d in graph.degree())
    both = sum(1 for v in graph if graph.out_degree(v) and graph.in_degree(v))
    mutual = sum(1 for a, b in graph.edges if graph.has_edge(b, a)) // 2
    largest = max((len(c) for c in nx.weakly_connected_components(graph)), default=0)
    kinds = nx.get_node_attributes(graph, "kind")
    pairs = {"citizen-organization": 0, "citizen-professional": 0, "organization-professional": 0}
    for a, b in graph.edges:
        if kinds[a] != kinds[b]:
            pairs["-".join(sorted((kinds[a], kinds[b])))] += 1
    professionals = [v for v in graph if kinds[v] == "professional"]
    received = sum(1 for v in professionals if graph.in_degree(v))
    active = sum(1 for d in degrees if d)
    return {
        "members": n,
        "active_members": active,
        "edges": m,
        "minutes": sum(d["minutes"] for _, _, d in graph.edges(data=True)),
        "density": nx.density(graph),
        "reciprocity": nx.reciprocity(graph) if m else None,
        "mutual_dyad_share": mutual / (m - mutual) if m else None,
        "gave_and_received": both,
        "both_ways_share": both / n if n else None,
        "weak_components": nx.number_weakly_connected_components(graph),
        "strong_components": nx.number_strongly_connected_components(graph),
        "largest_component": largest,
        "largest_component_share": largest / n if n else None,
        "isolates": nx.number_of_isolates(graph),
        "average_clustering": nx.average_clustering(graph.to_undirected()) if n else 0.0,
        "degree": {
            "min": degrees[0],
            "median": float(statistics.median(degrees)),
            "mean": sum(degrees) / n,
            "max": degrees[-1],
            "p90": degrees[math.ceil(0.9 * n) - 1],
        }
        if n
        else None,
        "balance_gini": gini([graph.nodes[v]["balance"] for v in graph]),
        "cross_kind": {
            "ties": sum(pairs.values()),
            "share": sum(pairs.values()) / m if m else None,
            "by_pair": {k: {"ties": v, "share": v / m if m else None} for k, v in pairs.items()},
        },
        "professionals": len(professionals),
        "professionals_who_received": received,
        "professionals_received_share": received / len(professionals) if professionals else None,
    }


def assert_close(ours: Any, reference: Any, path: str = "") -> None:
    """Equal figure by figure: integers exactly, floats to 1e-9."""
    if isinstance(reference, dict):
        for key, value in reference.items():
            assert_close(ours[key], value, f"{path}.{key}")
    elif isinstance(reference, float) and not isinstance(ours, bool):
        assert ours is not None, path
        assert math.isclose(ours, reference, rel_tol=1e-9, abs_tol=1e-12), (path, ours, reference)
    else:
        assert ours == reference, (path, ours, reference)

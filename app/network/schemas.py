from __future__ import annotations

import enum
from datetime import date, datetime

from pydantic import BaseModel, Field

from app.core.pagination import Page
from app.core.schemas import PublicId
from app.models.exchanges import ListingType
from app.models.identity import MemberKind, MemberRole


class GraphFormat(enum.StrEnum):
    node_link = "node-link"
    cytoscape = "cytoscape"
    graphml = "graphml"
    gexf = "gexf"


class PathMode(enum.StrEnum):
    directed = "directed"
    undirected = "undirected"


class WindowRead(BaseModel):
    since: date | None = Field(description="First day counted (inclusive); null: from the start")
    until: date | None = Field(description="Last day counted (inclusive); null: up to today")


class FiltersRead(BaseModel):
    kinds: list[MemberKind] | None = Field(description="Member kinds kept; null: every kind")
    min_minutes: int = Field(description="Ties below this many minutes are left out")


class Freshness(BaseModel):
    computed_at: datetime = Field(description="When the snapshot these figures come from was built")
    age_seconds: float = Field(description="How old that snapshot is")
    stale: bool = Field(
        description="true when a newer posting exists and a rebuild is under way; the figures "
        "are those of `computed_at`"
    )


class MemberRef(BaseModel):
    member_id: PublicId
    display_name: str
    kind: MemberKind
    role: MemberRole


# --- member view --------------------------------------------------------------------------


class ConnectionRead(BaseModel):
    member: MemberRef = Field(description="The other person in this tie")
    given_minutes: int = Field(description="Minutes the member gave them")
    received_minutes: int = Field(description="Minutes the member received from them")
    given_count: int = Field(description="Exchanges in which the member gave them help")
    received_count: int = Field(description="Exchanges in which the member received their help")
    first_date: date
    last_date: date
    mutual: bool = Field(description="Help has flowed both ways")
    reciprocity: float = Field(
        description="min(given, received) / max(given, received): 1 is an even tie, 0 one-way"
    )


class ConnectionsSummary(BaseModel):
    gave_to: int = Field(description="People the member gave help to")
    received_from: int = Field(description="People the member received help from")
    mutual_ties: int
    given_minutes: int
    received_minutes: int


class ConnectionsPage(Page[ConnectionRead]):
    member_id: PublicId
    window: WindowRead
    summary: ConnectionsSummary


class GraphNode(BaseModel):
    id: str
    display_name: str
    kind: MemberKind
    role: MemberRole
    joined_on: date
    distance: int | None = Field(default=None, description="Hops from the centre (ego networks)")


class GraphEdge(BaseModel):
    source: str
    target: str
    minutes: int
    count: int
    first_date: date
    last_date: date


class EgoNetwork(BaseModel):
    """Node-link JSON in the shape ``networkx.node_link_graph`` reads."""

    directed: bool = True
    multigraph: bool = False
    graph: dict[str, str | int | bool | None]
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    truncated: bool = Field(description="true when `limit` cut off the farthest members")
    window: WindowRead


class SuggestedListing(BaseModel):
    id: PublicId
    type: ListingType
    title: str
    category: str
    tags: list[str]
    owner: MemberRef
    created_at: datetime


class Suggestion(BaseModel):
    reason: str = Field(
        description="`request_you_could_answer` (an open request matching your offers or "
        "skills) or `offer_for_your_need` (an open offer matching your requests or needs)"
    )
    listing: SuggestedListing
    matched_on: list[str] = Field(description="What matched: `category:…`, `tag:…`")
    distance: int | None = Field(
        description="Hops from you to the listing's owner in the support network; null: no chain"
    )
    waiting_days: int = Field(description="Days since the listing was posted")


class SuggestionsRead(BaseModel):
    member_id: PublicId
    items: list[Suggestion]


# --- community view -----------------------------------------------------------------------


class DegreeSummary(BaseModel):
    min: int
    median: float
    mean: float
    max: int
    p90: int = Field(description="Nearest-rank 90th percentile")


class Broker(MemberRef):
    betweenness: float = Field(description="Normalised directed betweenness centrality")


class BetweennessMethod(BaseModel):
    method: str = Field(description="`exact` or `sampled` (source pivots, Brandes & Pich 2007)")
    pivots: int = Field(description="Source vertices used (all of them when exact)")
    max_error: float = Field(
        description="Bound on the absolute error of each normalised value, holding for every "
        "member at once with probability `confidence` (Hoeffding); 0 when exact"
    )
    confidence: float


class KindPairTies(BaseModel):
    ties: int
    share: float | None


class CrossKindTies(BaseModel):
    ties: int = Field(description="Ties whose two ends are of different kinds")
    share: float | None = Field(description="Of all ties; null without ties")
    by_pair: dict[str, KindPairTies] = Field(
        description="`citizen-professional`, `citizen-organization`, `organization-professional`"
    )


class NetworkMetrics(BaseModel):
    members: int = Field(
        description="Nodes: active members who had joined by the window's end, "
        "plus anyone with a tie in the window"
    )
    active_members: int = Field(description="Members with at least one tie in the window")
    edges: int = Field(description="Directed ties provider -> receiver")
    minutes: int = Field(description="Minutes on all ties")
    density: float = Field(description="edges / (n (n - 1)), as networkx.density")
    reciprocity: float | None = Field(
        description="Share of ties whose reverse tie exists (networkx.reciprocity)"
    )
    mutual_dyad_share: float | None = Field(
        description="Mutual pairs / connected pairs (dyadic reciprocity)"
    )
    gave_and_received: int
    both_ways_share: float | None = Field(
        description="Members who both gave and received / members"
    )
    weak_components: int
    strong_components: int
    largest_component: int = Field(description="Members in the largest weakly connected component")
    largest_component_share: float | None
    isolates: int = Field(description="Members with no tie in the window")
    average_clustering: float = Field(
        description="Mean local clustering of the underlying simple undirected graph, members "
        "with fewer than two neighbours counting 0 (networkx.average_clustering(G.to_undirected()))"
    )
    degree: DegreeSummary | None = Field(description="Ties in plus out per member")
    balance_gini: float | None = Field(
        description="Gini of current member balances, normalised by the mean absolute balance "
        "(Raffinetti et al. 2015) so it stays in [0, 1] with negative balances"
    )
    top_brokers: list[Broker]
    betweenness: BetweennessMethod
    cross_kind: CrossKindTies
    professionals: int
    professionals_who_received: int
    professionals_received_share: float | None


class NetworkMetricsRead(Freshness):
    community_id: PublicId
    window: WindowRead
    filters: FiltersRead
    metrics: NetworkMetrics


class PathStep(BaseModel):
    member: MemberRef
    minutes_to_next: int | None = Field(
        description="Minutes on the tie to the next member (in the direction walked)"
    )


class PathRead(Freshness):
    community_id: PublicId
    mode: PathMode
    from_member_id: PublicId
    to_member_id: PublicId
    hops: int | None = Field(description="Ties on the path; null when unreachable")
    path: list[PathStep]
    reason: str | None = Field(description="Why the path is empty, when it is")
    window: WindowRead

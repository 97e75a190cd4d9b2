"""What coordinators and members see of the support network, built through the public API."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from typing import Any

import networkx as nx
import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.factories import Actor, Api, IdentityApi, expect, problem

pytestmark = pytest.mark.anyio

TODAY = date.today()


def _exchange(
    providers: list[tuple[Actor, int]],
    receivers: list[tuple[Actor, int]],
    *,
    category: str = "gardening",
    days_ago: int = 0,
) -> dict[str, Any]:
    return {
        "providers": [{"member_id": p.member_id, "minutes": m} for p, m in providers],
        "receivers": [{"member_id": r.member_id, "minutes": m} for r, m in receivers],
        "description": "Helped out",
        "category": category,
        "occurred_on": (TODAY - timedelta(days=days_ago)).isoformat(),
        "mode": "record",
    }


class World:
    """A small community: a coordinator, a GP, an organisation and five citizens."""

    def __init__(self, client: AsyncClient, app: FastAPI) -> None:
        self.client = client
        self.api = IdentityApi(client, app)

    async def build(self) -> World:
        community, self.admin = await self.api.community()
        self.cid = community["id"]
        member = self.api.member
        self.coordinator = await member(self.cid, self.admin, role="coordinator")
        self.gp = await member(self.cid, self.admin, kind="professional", name="Dr Okafor")
        self.org = await member(self.cid, self.admin, kind="organization", name="Food bank")
        self.ann, self.bob, self.cat, self.dan, self.eve = [
            await member(self.cid, self.admin, name=name)
            for name in ("Ann", "Bob", "Cat", "Dan", "Eve")
        ]
        return self

    async def record(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = expect(
            await self.client.post(
                f"/v1/communities/{self.cid}/exchanges", json=body, headers=self.admin.headers
            ),
            201,
        )
        return created

    async def get(self, path: str, by: Actor | None = None, /, **params: Any) -> Any:
        return await self.client.get(path, params=params, headers=(by or self.admin).headers)


@pytest.fixture
async def world(client: AsyncClient, app: FastAPI) -> World:
    w = await World(client, app).build()
    # Ann <-> Bob both ways; Bob -> Cat; a group: Ann and Cat (2:1) give Dan 100 minutes;
    # the GP gives Eve 60; Eve gives the GP 30 (roles blur); the organisation gives Ann 45.
    await w.record(_exchange([(w.ann, 60)], [(w.bob, 60)], days_ago=40))
    await w.record(_exchange([(w.bob, 30)], [(w.ann, 30)], days_ago=20))
    await w.record(_exchange([(w.bob, 90)], [(w.cat, 90)], days_ago=10))
    await w.record(_exchange([(w.ann, 20), (w.cat, 10)], [(w.dan, 100 - 70)], days_ago=5))
    await w.record(_exchange([(w.gp, 60)], [(w.eve, 60)], category="health and wellbeing"))
    await w.record(_exchange([(w.eve, 30)], [(w.gp, 30)], category="transport"))
    await w.record(_exchange([(w.org, 45)], [(w.ann, 45)], category="shopping"))
    return w


async def test_connections_show_minutes_each_way_and_reciprocity(world: World) -> None:
    body = expect(await world.get(f"/v1/members/{world.ann.member_id}/connections", world.ann), 200)
    ties = {item["member"]["display_name"]: item for item in body["items"]}
    assert set(ties) == {"Ann", "Bob", "Dan", "Food bank"} - {"Ann"}
    assert ties["Bob"]["given_minutes"] == 60
    assert ties["Bob"]["received_minutes"] == 30
    assert ties["Bob"]["mutual"] is True
    assert ties["Bob"]["reciprocity"] == 0.5
    # Ann gave 20 of the 30 provided minutes: two thirds of Dan's 30 received minutes.
    assert ties["Dan"]["given_minutes"] == 20
    assert ties["Food bank"]["received_minutes"] == 45
    assert ties["Food bank"]["member"]["kind"] == "organization"
    assert body["summary"] == {
        "gave_to": 2,
        "received_from": 2,
        "mutual_ties": 1,
        "given_minutes": 80,
        "received_minutes": 75,
    }
    # Strongest tie first, and pages follow each other.
    assert [i["member"]["display_name"] for i in body["items"]] == ["Bob", "Food bank", "Dan"]
    first = expect(
        await world.get(f"/v1/members/{world.ann.member_id}/connections", world.ann, limit=2), 200
    )
    rest = expect(
        await world.get(
            f"/v1/members/{world.ann.member_id}/connections",
            world.ann,
            limit=2,
            cursor=first["next_cursor"],
        ),
        200,
    )
    assert [i["member"]["display_name"] for i in first["items"] + rest["items"]] == [
        "Bob",
        "Food bank",
        "Dan",
    ]
    assert rest["next_cursor"] is None


async def test_connections_filter_by_window_kind_and_minutes(world: World) -> None:
    path = f"/v1/members/{world.ann.member_id}/connections"
    recent = expect(await world.get(path, since=(TODAY - timedelta(days=30)).isoformat()), 200)
    bob = next(i for i in recent["items"] if i["member"]["display_name"] == "Bob")
    assert (bob["given_minutes"], bob["received_minutes"]) == (0, 30)
    organisations = expect(await world.get(path, kind="organization"), 200)
    assert [i["member"]["display_name"] for i in organisations["items"]] == ["Food bank"]
    big = expect(await world.get(path, min_minutes=45), 200)
    assert {i["member"]["display_name"] for i in big["items"]} == {"Bob", "Food bank"}


async def test_reversed_exchanges_drop_out_and_the_snapshot_follows(world: World) -> None:
    metrics_path = f"/v1/communities/{world.cid}/network/metrics"
    before = expect(await world.get(metrics_path), 200)
    again = expect(await world.get(metrics_path), 200)
    assert again["computed_at"] == before["computed_at"]  # served from the cache
    assert again["stale"] is False

    extra = await world.record(_exchange([(world.dan, 15)], [(world.eve, 15)]))
    expect(
        await world.client.post(
            f"/v1/exchanges/{extra['id']}/dispute",
            json={"note": "never happened"},
            headers=world.eve.headers,
        ),
        200,
    )
    disputed = expect(await world.get(metrics_path), 200)
    assert disputed["computed_at"] != before["computed_at"]
    assert disputed["metrics"]["edges"] == before["metrics"]["edges"] + 1  # disputed still counts
    expect(
        await world.client.post(
            f"/v1/exchanges/{extra['id']}/resolve",
            json={"outcome": "reversed", "note": "agreed"},
            headers=world.coordinator.headers,
        ),
        200,
    )
    reversed_ = expect(await world.get(metrics_path), 200)
    assert reversed_["metrics"]["edges"] == before["metrics"]["edges"]
    eve = expect(await world.get(f"/v1/members/{world.eve.member_id}/connections"), 200)
    assert "Dan" not in {i["member"]["display_name"] for i in eve["items"]}


async def test_ego_network_reaches_depth(world: World) -> None:
    path = f"/v1/members/{world.cat.member_id}/network"
    near = expect(await world.get(path, world.cat, depth=1), 200)
    assert {n["display_name"] for n in near["nodes"]} == {"Cat", "Bob", "Dan"}
    far = expect(await world.get(path, world.cat, depth=2), 200)
    assert {n["display_name"] for n in far["nodes"]} == {"Cat", "Bob", "Dan", "Ann"}
    graph = nx.node_link_graph(far)
    assert graph.is_directed()
    assert graph.has_edge(world.bob.member_id, world.cat.member_id)
    assert graph.nodes[world.ann.member_id]["distance"] == 2
    capped = expect(await world.get(path, world.cat, depth=3, limit=2), 200)
    assert capped["truncated"] is True
    assert capped["nodes"][0]["display_name"] == "Cat"


async def test_suggestions_rank_by_network_closeness(world: World) -> None:
    async def listing(owner: Actor, kind: str, category: str, tags: list[str]) -> str:
        body = expect(
            await world.client.post(
                f"/v1/communities/{world.cid}/listings",
                json={
                    "type": kind,
                    "title": f"{kind} {category}",
                    "category": category,
                    "tags": tags,
                },
                headers=owner.headers,
            ),
            201,
        )
        return str(body["id"])

    await listing(world.cat, "offer", "gardening", ["weeding"])
    far_request = await listing(world.gp, "request", "gardening", [])  # GP: no chain to Cat
    near_request = await listing(world.dan, "request", "creative", ["weeding"])  # Dan: 1 hop
    await listing(world.cat, "request", "transport", [])
    offer = await listing(world.eve, "offer", "transport", [])
    await listing(world.bob, "offer", "teaching", [])  # matches nothing of Cat's
    body = expect(await world.get(f"/v1/members/{world.cat.member_id}/suggestions", world.cat), 200)
    ids = [(s["listing"]["id"], s["reason"], s["distance"]) for s in body["items"]]
    assert ids == [
        (near_request, "request_you_could_answer", 1),
        (far_request, "request_you_could_answer", None),
        (offer, "offer_for_your_need", None),
    ] or ids == [
        (near_request, "request_you_could_answer", 1),
        (offer, "offer_for_your_need", None),
        (far_request, "request_you_could_answer", None),
    ]
    assert body["items"][0]["matched_on"] == ["tag:weeding"]


async def test_path_follows_help_as_it_flowed(world: World) -> None:
    path = f"/v1/communities/{world.cid}/network/path"
    body = expect(
        await world.get(path, **{"from": world.org.member_id, "to": world.cat.member_id}), 200
    )
    assert [s["member"]["display_name"] for s in body["path"]] == ["Food bank", "Ann", "Bob", "Cat"]
    assert body["hops"] == 3
    assert [s["minutes_to_next"] for s in body["path"]] == [45, 60, 90, None]
    backwards = expect(
        await world.get(path, **{"from": world.cat.member_id, "to": world.org.member_id}), 200
    )
    assert backwards["path"] == []
    assert backwards["hops"] is None
    assert "mode=undirected" in backwards["reason"]
    undirected = expect(
        await world.get(
            path,
            **{"from": world.cat.member_id, "to": world.org.member_id, "mode": "undirected"},
        ),
        200,
    )
    assert undirected["hops"] == 3
    apart = expect(
        await world.get(
            path, **{"from": world.cat.member_id, "to": world.gp.member_id, "mode": "undirected"}
        ),
        200,
    )
    assert apart["path"] == []
    assert "separate parts" in apart["reason"]


async def test_exports_parse_in_networkx(world: World) -> None:
    base = f"/v1/communities/{world.cid}/network"
    node_link = await world.get(base, format="node-link")
    assert node_link.headers["content-type"].startswith("application/json")
    reference = nx.node_link_graph(node_link.json())
    cyto = nx.cytoscape_graph((await world.get(base, format="cytoscape")).json())
    graphml_response = await world.get(base, format="graphml")
    assert graphml_response.headers["content-type"].startswith("application/graphml+xml")
    graphml = nx.parse_graphml(graphml_response.text)
    gexf_text = (await world.get(base, format="gexf")).text
    gexf = nx.read_gexf(io.BytesIO(gexf_text.encode()))
    for graph in (cyto, graphml, gexf):
        assert graph.is_directed()
        assert set(graph.nodes) == set(reference.nodes)
        assert set(graph.edges) == set(reference.edges)
    assert graphml.edges[world.bob.member_id, world.cat.member_id]["minutes"] == 90
    assert gexf.nodes[world.gp.member_id]["label"] == "Dr Okafor"
    assert cyto.nodes[world.gp.member_id]["kind"] == "professional"
    # GEXF carries the growth over time: start dates on nodes and ties.
    root = ET.fromstring(gexf_text)  # noqa: S314 - our own export
    ns = {"g": "http://www.gexf.net/1.2draft"}
    graph_el = root.find("g:graph", ns)
    assert graph_el is not None
    assert graph_el.get("mode") == "dynamic"
    edge_starts = {e.get("start") for e in root.iterfind(".//g:edge", ns)}
    assert (TODAY - timedelta(days=40)).isoformat() in edge_starts
    # Nothing personal beyond name, kind and role.
    node = node_link.json()["nodes"][0]
    assert set(node) == {"id", "display_name", "kind", "role", "joined_on"}


async def test_who_may_see_the_network(world: World, client: AsyncClient, app: FastAPI) -> None:
    # A member sees their own connections, not someone else's.
    problem(
        await world.get(f"/v1/members/{world.bob.member_id}/connections", world.ann),
        403,
        "insufficient_role",
    )
    problem(
        await world.get(f"/v1/communities/{world.cid}/network/metrics", world.ann),
        403,
        "insufficient_role",
    )
    expect(
        await world.get(f"/v1/members/{world.bob.member_id}/connections", world.coordinator), 200
    )
    # Someone from another community learns nothing.
    other, platform_admin = await Api(client, app).community()
    outsider = await world.api.member(other["id"], platform_admin, role="admin")
    problem(
        await world.get(f"/v1/members/{world.bob.member_id}/connections", outsider),
        404,
        "member_not_found",
    )
    # Partner clients need network:read.
    reader = await world.api.partner(world.cid, world.admin, ["network:read"])
    no_scope = await world.api.partner(world.cid, world.admin, ["members:read"])
    expect(
        await client.get(f"/v1/communities/{world.cid}/network/metrics", headers=reader.headers),
        200,
    )
    problem(
        await client.get(f"/v1/communities/{world.cid}/network/metrics", headers=no_scope.headers),
        403,
        "insufficient_scope",
    )
    problem(
        await client.get(f"/v1/communities/{other['id']}/network", headers=reader.headers),
        404,
        "community_not_found",
    )


async def test_bad_input_is_a_precise_4xx(world: World, client: AsyncClient, app: FastAPI) -> None:
    base = f"/v1/communities/{world.cid}/network"
    problem(await world.get(base, format="dot"), 422, "validation_error")
    problem(
        await world.get(
            f"{base}/metrics",
            since=TODAY.isoformat(),
            until=(TODAY - timedelta(days=1)).isoformat(),
        ),
        422,
        "invalid_window",
    )
    problem(
        await world.get(f"{base}/metrics", since=(TODAY + timedelta(days=30)).isoformat()),
        422,
        "invalid_window",
    )
    problem(await world.get(f"{base}/metrics", since="yesterday"), 422, "validation_error")
    problem(await world.get(f"{base}/metrics", min_minutes=-1), 422, "validation_error")
    problem(await world.get(f"{base}/metrics", kind="robot"), 422, "validation_error")
    problem(
        await world.get(f"/v1/members/{world.ann.member_id}/network", depth=4),
        422,
        "validation_error",
    )
    problem(
        await world.get(f"/v1/members/{world.ann.member_id}/network", depth=0),
        422,
        "validation_error",
    )
    problem(
        await world.get(f"/v1/members/{world.ann.member_id}/connections", cursor="bm9wZQ"),
        422,
        "invalid_cursor",
    )
    _, outsider_admin = await Api(client, app).community()
    problem(
        await world.get(
            f"{base}/path", **{"from": world.ann.member_id, "to": outsider_admin.member_id}
        ),
        422,
        "member_not_in_community",
    )
    problem(
        await world.get(f"{base}/path", **{"from": "not-an-id", "to": world.ann.member_id}),
        422,
        "member_not_in_community",
    )
    problem(
        await world.get(f"{base}/path", **{"from": world.ann.member_id}), 422, "validation_error"
    )
    # An empty window is fine: nothing happened in it.
    empty = expect(
        await world.get(
            f"{base}/metrics",
            since=(TODAY - timedelta(days=400)).isoformat(),
            until=(TODAY - timedelta(days=399)).isoformat(),
        ),
        200,
    )
    assert empty["metrics"]["edges"] == 0
    assert empty["metrics"]["reciprocity"] is None


async def test_reports_as_json_and_csv(world: World) -> None:
    reports = f"/v1/communities/{world.cid}/reports"
    activity = expect(await world.get(f"{reports}/activity", period="month"), 200)
    this_month = activity["periods"][-1]
    assert this_month["period"] == f"{TODAY.year}-{TODAY.month:02d}"
    assert sum(p["exchanges"] for p in activity["periods"]) == 7
    assert sum(p["minutes"] for p in activity["periods"]) == 60 + 30 + 90 + 30 + 60 + 30 + 45
    assert sum(p["new_members"] for p in activity["periods"]) == 9
    cohort = activity["retention"][-1]
    assert cohort["members"] == 9
    assert cohort["active"] == [this_month["active_members"]]  # everyone joined this month

    response = await world.client.get(
        f"{reports}/activity", headers={**world.admin.headers, "Accept": "text/csv"}
    )
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["period"] for r in rows] == [p["period"] for p in activity["periods"]]
    assert int(rows[-1]["exchanges"]) == this_month["exchanges"]

    coproduction = expect(await world.get(f"{reports}/coproduction"), 200)
    principles = [p["principle"] for p in coproduction["principles"]]
    assert principles == [
        "assets",
        "capabilities",
        "mutuality",
        "networks",
        "blurred_roles",
        "catalysts",
    ]
    indicators = {i["key"]: i for p in coproduction["principles"] for i in p["indicators"]}
    assert all(i["definition"] for i in indicators.values())
    assert indicators["categories_given"]["value"] == 4
    assert indicators["professionals_who_received_share"]["value"] == pytest.approx(1 / 2)
    response = await world.client.get(
        f"{reports}/coproduction", headers={**world.admin.headers, "Accept": "text/csv"}
    )
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["indicator"] for r in rows} == set(indicators)
    problem(
        await world.client.get(
            f"{reports}/coproduction", headers={**world.admin.headers, "Accept": "image/png"}
        ),
        406,
        "not_acceptable",
    )
    problem(await world.get(f"{reports}/activity", period="fortnight"), 422, "validation_error")

"""Every figure of the metrics endpoint against NetworkX on generated communities."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Any

import networkx as nx
import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from app.network.config import NetworkSettings
from tests.factories import Actor, Api, expect
from tests.network.community import (
    GenCommunity,
    assert_close,
    generate,
    insert_community,
    reference_graph,
    reference_metrics,
)

pytestmark = pytest.mark.anyio


async def _generated(
    client: AsyncClient, app: FastAPI, members: int, exchanges: int, seed: int
) -> tuple[GenCommunity, Actor]:
    api = Api(client, app)
    community, admin = await api.community()
    generated = generate(
        uuid.UUID(community["id"]), members=members, exchanges=exchanges, seed=seed
    )
    await insert_community(app.state.sessionmaker, generated)
    # The founding admin is a member too: the reference sees them as an isolated professional.
    from tests.network.community import GenMember

    generated.members.append(
        GenMember(
            id=uuid.UUID(admin.member_id),
            name="Founding admin",
            kind="professional",
            role="admin",
            status="active",
            joined_on=date.today(),
            balance=0,
        )
    )
    return generated, admin


def _check_brokers(ours: list[dict[str, Any]], graph: nx.DiGraph, tolerance: float) -> None:
    exact = nx.betweenness_centrality(graph)
    for broker in ours:
        assert abs(broker["betweenness"] - exact[broker["member_id"]]) <= tolerance + 1e-12, broker
    if tolerance == 0:
        expected = sorted((v for v in exact.values() if v > 0), reverse=True)[: len(ours)]
        assert [b["betweenness"] for b in ours] == pytest.approx(expected, rel=1e-9, abs=1e-12)


async def test_metrics_match_networkx(client: AsyncClient, app: FastAPI) -> None:
    generated, admin = await _generated(client, app, members=260, exchanges=1800, seed=11)
    cid = str(generated.community_id)
    today = date.today()
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({}, {}),
        ({"min_minutes": 90}, {"min_minutes": 90}),
        ({"kind": ["citizen", "professional"]}, {"kinds": {"citizen", "professional"}}),
        (
            {"since": (today - timedelta(days=300)).isoformat(), "until": today.isoformat()},
            {"since": today - timedelta(days=300), "until": today},
        ),
        (
            {"until": (today - timedelta(days=400)).isoformat(), "kind": "citizen"},
            {"until": today - timedelta(days=400), "kinds": {"citizen"}},
        ),
    ]
    for params, reference_args in cases:
        body = expect(
            await client.get(
                f"/v1/communities/{cid}/network/metrics", params=params, headers=admin.headers
            ),
            200,
        )
        graph = reference_graph(generated, **reference_args)
        metrics = body["metrics"]
        assert_close(metrics, reference_metrics(graph))
        assert metrics["betweenness"]["method"] == "exact"
        _check_brokers(metrics["top_brokers"], graph, 0)


async def test_exported_graph_is_the_reference_graph(client: AsyncClient, app: FastAPI) -> None:
    generated, admin = await _generated(client, app, members=120, exchanges=700, seed=3)
    cid = str(generated.community_id)
    reference = reference_graph(generated, min_minutes=60)
    response = await client.get(
        f"/v1/communities/{cid}/network",
        params={"format": "node-link", "min_minutes": 60},
        headers=admin.headers,
    )
    assert response.status_code == 200
    graph = nx.node_link_graph(response.json())
    assert graph.is_directed()
    assert set(graph.nodes) == set(reference.nodes)
    assert set(graph.edges) == set(reference.edges)
    for a, b, data in reference.edges(data=True):
        assert graph.edges[a, b]["minutes"] == data["minutes"]
        assert graph.edges[a, b]["count"] == data["count"]
        assert graph.edges[a, b]["first_date"] == data["first"].isoformat()
        assert graph.edges[a, b]["last_date"] == data["last"].isoformat()


async def test_sampled_betweenness_stays_within_its_stated_error(
    client: AsyncClient, app: FastAPI
) -> None:
    app.state.network_settings = NetworkSettings(
        betweenness_work_limit=20_000, betweenness_min_pivots=40
    )
    generated, admin = await _generated(client, app, members=300, exchanges=1500, seed=5)
    body = expect(
        await client.get(
            f"/v1/communities/{generated.community_id}/network/metrics", headers=admin.headers
        ),
        200,
    )
    method = body["metrics"]["betweenness"]
    assert method["method"] == "sampled"
    assert 40 <= method["pivots"] < body["metrics"]["members"]
    assert 0 < method["max_error"] < 1
    assert method["confidence"] == 0.95
    graph = reference_graph(generated)
    _check_brokers(body["metrics"]["top_brokers"], graph, method["max_error"])
    # Everything except betweenness is still exact.
    reference = reference_metrics(graph)
    assert_close(body["metrics"], reference)

"""Health, readiness and metrics: what a load balancer and Prometheus see."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from tests.conftest import BACKEND, PG_URL, make_settings
from tests.core.conftest import ServeApp
from tests.factories import Api, expect

pytestmark = pytest.mark.anyio


def _unreachable_database_url(tmp_path_str: str) -> str:
    if BACKEND == "postgresql":
        # Nothing listens on port 1; the connection is refused at once.
        return PG_URL.replace("127.0.0.1:5432", "127.0.0.1:1")
    return f"sqlite+aiosqlite:///{tmp_path_str}/missing-dir/deeper/timebank.db"


@asynccontextmanager
async def _serving_an_unreachable_database(
    serve: ServeApp, tmp_path: object
) -> AsyncIterator[AsyncClient]:
    """An app whose database cannot be opened. On SQLite, aiosqlite stops the worker thread of
    a connection that failed to open by a message to that thread, which answers on the event
    loop: wait for those threads to end while this test's loop still runs, or one reports to a
    closed loop during a later test (how soon it answers depends on the machine's load)."""
    url = _unreachable_database_url(str(tmp_path))
    assert url != PG_URL
    before = set(threading.enumerate())
    async with serve(create_app(make_settings(url))) as client:
        yield client
    for thread in set(threading.enumerate()) - before:
        if thread.name.endswith("(_connection_worker_thread)"):
            await asyncio.to_thread(thread.join, 10)


def _request_counts(exposition: str) -> dict[tuple[str, str, str], float]:
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "timebank_http_requests_total":
                labels = sample.labels
                counts[(labels["method"], labels["route"], labels["status"])] = sample.value
    return counts


async def test_healthz_and_readyz_answer_ok(client: AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


async def test_readyz_is_503_while_healthz_stays_up_when_the_database_is_unreachable(
    serve: ServeApp, tmp_path: object
) -> None:
    async with _serving_an_unreachable_database(serve, tmp_path) as client:
        ready = await client.get("/readyz")
        alive = await client.get("/healthz")

    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    body = ready.json()
    assert body["code"] == "database_unavailable"
    assert "127.0.0.1" not in ready.text
    assert "missing-dir" not in ready.text
    assert alive.status_code == 200


async def test_metrics_count_requests_by_route_template_never_by_raw_id(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    expect(await client.get(f"/v1/members/{admin.member_id}", headers=admin.headers), 200)
    missing = "0190d0a0-0000-7000-8000-000000000000"
    expect(await client.get(f"/v1/members/{missing}", headers=admin.headers), 404)
    expect(await client.get("/v1/nowhere"), 404)

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    counts = _request_counts(response.text)
    assert counts[("GET", "/v1/members/{member_id}", "200")] >= 1
    assert counts[("GET", "/v1/members/{member_id}", "404")] == 1
    assert counts[("GET", "<unmatched>", "404")] == 1
    assert "timebank_http_request_duration_seconds_bucket" in response.text
    for raw in (admin.member_id, missing, community["id"], "/v1/nowhere"):
        assert raw not in response.text


async def test_a_request_id_is_generated_when_absent(client: AsyncClient) -> None:
    first = (await client.get("/healthz")).headers["x-request-id"]
    second = (await client.get("/healthz")).headers["x-request-id"]
    assert first
    assert first != second


async def test_a_valid_request_id_is_echoed(client: AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "mobile-app:42.a_b-c"})
    assert response.headers["x-request-id"] == "mobile-app:42.a_b-c"


@pytest.mark.parametrize(
    "incoming",
    ["x" * 129, "has spaces", "new\\nline", "<script>", "ünïcode", ""],
    ids=["too-long", "spaces", "backslash", "markup", "non-ascii", "empty"],
)
async def test_an_invalid_request_id_is_replaced(client: AsyncClient, incoming: str) -> None:
    response = await client.get("/healthz", headers=[(b"X-Request-ID", incoming.encode("utf-8"))])
    echoed = response.headers["x-request-id"]
    assert echoed != incoming
    assert 1 <= len(echoed) <= 128
    assert echoed.isalnum()


async def test_every_response_carries_the_security_headers(client: AsyncClient) -> None:
    for response in (
        await client.get("/healthz"),
        await client.get("/v1/nowhere"),
        await client.post("/v1/users", json={}),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"


async def test_the_interactive_docs_may_be_cached(client: AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert "cache-control" not in response.headers
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    ("origin", "allowed"), [("https://app.example", True), ("https://evil.example", False)]
)
async def test_cors_preflight_is_allowed_only_for_configured_origins(
    database_url: str, serve: ServeApp, origin: str, allowed: bool
) -> None:
    app = create_app(make_settings(database_url, cors_origins=["https://app.example"]))
    async with serve(app) as client:
        preflight = await client.options(
            "/v1/me",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "Authorization",
            },
        )
        simple = await client.get("/healthz", headers={"Origin": origin})

    if allowed:
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        assert simple.headers["access-control-allow-origin"] == origin
        assert "X-Request-ID" in simple.headers["access-control-expose-headers"]
    else:
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-origin" not in simple.headers


async def test_without_configured_origins_no_cross_origin_access_is_granted(
    client: AsyncClient,
) -> None:
    response = await client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_a_request_that_cannot_reach_the_database_is_a_retryable_503(
    serve: ServeApp, tmp_path: object
) -> None:
    async with _serving_an_unreachable_database(serve, tmp_path) as client:
        response = await client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": "a@example.org", "password": "x" * 12},
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == "database_unavailable"
    assert "127.0.0.1" not in response.text

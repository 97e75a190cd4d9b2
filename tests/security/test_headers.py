"""Security headers on every kind of answer, and CORS only when deliberately configured.

tests/core/test_operations.py checks the headers on a success and the CORS preflight for an
allowed and a refused origin; this suite checks the refusals (401, 403, 404, 405, 413, 422,
429, 500) carry the same headers, and the CORS policy's edges: no wildcard, no credentials,
only the listed methods and headers, nothing at all when no origin is configured.
"""

from __future__ import annotations

import pytest
from httpx import AsyncClient

from app.main import create_app
from tests.conftest import make_settings
from tests.core.conftest import ServeApp
from tests.security.conftest import World

pytestmark = pytest.mark.anyio

EXPECTED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


async def test_refusals_carry_the_security_headers(
    database_url: str, serve: ServeApp, world: World, client: AsyncClient
) -> None:
    answers = [
        await client.get("/v1/me"),  # 401
        await client.get(
            f"/v1/communities/{world.b['id']}/members", headers=world.a_member.headers
        ),  # 403 or 404
        await client.get("/v1/nowhere"),  # 404
        await client.delete("/v1/me"),  # 405
        await client.post("/v1/users", json={"email": "nope"}),  # 422
        await client.post("/v1/users", content=b"{", headers={"content-type": "application/json"}),
    ]
    app = create_app(make_settings(database_url, max_request_body_bytes=1024))
    async with serve(app) as small:
        answers.append(await small.post("/v1/users", json={"email": "x" * 2000}))  # 413
    assert {a.status_code for a in answers} >= {400, 401, 404, 405, 413, 422}
    for answer in answers:
        for name, value in EXPECTED.items():
            assert answer.headers.get(name) == value, (answer.status_code, name)
        assert answer.headers["x-request-id"]


async def test_cors_grants_no_wildcard_no_credentials_and_only_what_is_listed(
    database_url: str, serve: ServeApp
) -> None:
    origin = "https://app.example"
    app = create_app(make_settings(database_url, cors_origins=[origin]))
    async with serve(app) as client:
        preflight = await client.options(
            "/v1/me",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "Authorization, Idempotency-Key",
            },
        )
        odd_header = await client.options(
            "/v1/me",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "X-Evil",
            },
        )
        odd_method = await client.options(
            "/v1/me",
            headers={"Origin": origin, "Access-Control-Request-Method": "PUT"},
        )
        lookalike = await client.get("/healthz", headers={"Origin": "https://app.example.evil"})
        simple = await client.get("/healthz", headers={"Origin": origin})

    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-credentials" not in preflight.headers
    assert "*" not in preflight.headers["access-control-allow-methods"]
    assert "PATCH" in preflight.headers["access-control-allow-methods"]
    assert odd_header.status_code == 400
    assert odd_method.status_code == 400
    assert "access-control-allow-origin" not in lookalike.headers
    assert simple.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-credentials" not in simple.headers
    assert simple.headers["x-content-type-options"] == "nosniff"


async def test_without_configured_origins_a_preflight_grants_nothing(client: AsyncClient) -> None:
    preflight = await client.options(
        "/v1/me",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 405
    assert not [h for h in preflight.headers if h.lower().startswith("access-control-")]
    assert preflight.headers["x-frame-options"] == "DENY"

"""Every error a client sees is an RFC 9457 problem document with a stable code."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from httpx import AsyncClient, Response

from app.main import create_app
from tests.conftest import make_settings
from tests.core.conftest import ServeApp

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"


def problem(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(f"/{code}")
    assert body["title"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_an_unknown_route_is_a_404_problem(client: AsyncClient) -> None:
    response = await client.get("/v1/no-such-thing")
    body = problem(response, 404, "not_found")
    assert body["instance"] == "/v1/no-such-thing"
    assert "/v1/no-such-thing" in body["detail"]


async def test_a_wrong_method_is_a_405_problem_naming_the_allowed_ones(
    client: AsyncClient,
) -> None:
    response = await client.delete("/healthz")
    problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


async def test_malformed_json_is_a_400_not_a_422(client: AsyncClient) -> None:
    response = await client.post(
        "/v1/users",
        content=b'{"email": "a@example.org",',
        headers={"content-type": "application/json"},
    )
    problem(response, 400, "malformed_json")


async def test_invalid_fields_are_a_422_listing_each_problem(client: AsyncClient) -> None:
    response = await client.post(
        "/v1/users", json={"email": "not-an-email", "password": "x", "colour": "blue"}
    )
    body = problem(response, 422, "validation_error")
    locations = {tuple(error["loc"]) for error in body["errors"]}
    assert ("body", "email") in locations
    assert ("body", "colour") in locations  # a misspelt field is refused, not ignored
    assert all(error["msg"] and error["type"] for error in body["errors"])


async def test_an_unexpected_exception_is_a_500_that_leaks_nothing(
    database_url: str, serve: ServeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(make_settings(database_url, log_json=True))

    @app.get("/v1/fails")
    async def fails() -> None:
        raise RuntimeError("password=hunter2 at postgresql://db.internal:5432")

    async with serve(app) as client:
        response = await client.get("/v1/fails", headers={"X-Request-ID": "trace-500"})

    body = problem(response, 500, "internal_error")
    assert body["request_id"] == "trace-500"
    for secret in ("hunter2", "db.internal", "RuntimeError", "Traceback", "fails()"):
        assert secret not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"

    # The operator, not the client, gets the details, under the same request id.
    lines = capsys.readouterr().out.splitlines()
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    failure = next(entry for entry in logged if entry["msg"] == "unhandled error")
    assert failure["request_id"] == "trace-500"
    assert "hunter2" in failure["exc"]


@pytest.fixture
async def small_body_client(database_url: str, serve: ServeApp) -> AsyncIterator[AsyncClient]:
    app = create_app(make_settings(database_url, max_request_body_bytes=1024))
    async with serve(app) as client:
        yield client


async def test_a_body_declared_too_large_is_refused_with_413(
    small_body_client: AsyncClient,
) -> None:
    response = await small_body_client.post(
        "/v1/users", json={"email": "a@example.org", "password": "p" * 2000}
    )
    body = problem(response, 413, "payload_too_large")
    assert "1024" in body["detail"]


async def test_a_chunked_body_that_grows_too_large_is_refused_with_413(
    small_body_client: AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "a@example.org", "password": "'
        for _ in range(10):
            yield b"p" * 200
        yield b'"}'

    response = await small_body_client.post(
        "/v1/users", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    problem(response, 413, "payload_too_large")


async def test_a_body_within_the_limit_is_accepted(small_body_client: AsyncClient) -> None:
    response = await small_body_client.post(
        "/v1/users", json={"email": "small@example.org", "password": "long enough password"}
    )
    assert response.status_code == 201, response.text

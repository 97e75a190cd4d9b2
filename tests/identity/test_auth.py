"""Signing in: the password and client-credentials grants, refresh rotation, logout."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import update

from app.core.clock import utcnow
from app.main import create_app
from app.models import RefreshToken, User
from tests.conftest import make_settings
from tests.factories import PASSWORD, IdentityApi, bearer, expect, problem, unique

pytestmark = pytest.mark.anyio


async def _password_grant(
    client: AsyncClient, email: str, password: str = PASSWORD
) -> dict[str, object]:
    response = await client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": password},
    )
    body: dict[str, object] = response.json()
    body["_status"] = response.status_code
    return body


async def _refresh(client: AsyncClient, refresh_token: str) -> tuple[int, dict[str, object]]:
    response = await client.post("/v1/auth/refresh", json={"refresh_token": refresh_token})
    return response.status_code, response.json()


# --- password grant ----------------------------------------------------------------------


async def test_password_grant_gives_a_working_token_pair(
    client: AsyncClient, api: IdentityApi
) -> None:
    user = await api.user()
    pair = await api.token(user.email)
    assert pair["token_type"] == "bearer"
    assert pair["expires_in"] > 0
    assert pair["refresh_token"]
    me = expect(await client.get("/v1/me", headers=bearer(pair["access_token"])), 200)
    assert me["user"]["id"] == user.user_id
    assert me["user"]["email"] == user.email
    assert me["user"]["is_platform_admin"] is False
    assert me["memberships"] == []


async def test_email_is_matched_case_insensitively(client: AsyncClient, api: IdentityApi) -> None:
    user = await api.user(f"{unique('Mixed')}@Example.ORG")
    assert user.email != user.email.lower()
    pair = await api.token(f"  {user.email.upper()} ")
    me = expect(await client.get("/v1/me", headers=bearer(pair["access_token"])), 200)
    assert me["user"]["email"] == user.email.lower()


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("known", "wrong password entirely"),
        ("nobody-at-all@example.org", PASSWORD),
        ("known", ""),
    ],
    ids=["wrong-password", "unknown-email", "empty-password"],
)
async def test_wrong_credentials_are_an_invalid_grant(
    client: AsyncClient, api: IdentityApi, username: str, password: str
) -> None:
    user = await api.user()
    response = await client.post(
        "/v1/auth/token",
        data={
            "grant_type": "password",
            "username": user.email if username == "known" else username,
            "password": password,
        },
    )
    body = problem(response, 400, "invalid_grant")
    assert body["error"] == "invalid_grant"
    assert "access_token" not in body


async def test_an_unknown_email_and_a_wrong_password_look_the_same(
    client: AsyncClient, api: IdentityApi
) -> None:
    user = await api.user()
    wrong = await client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": user.email, "password": "not it at all"},
    )
    unknown = await client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": "ghost@example.org", "password": PASSWORD},
    )
    for key in ("status", "code", "title", "detail"):
        assert wrong.json()[key] == unknown.json()[key]


async def test_a_disabled_user_cannot_sign_in_and_their_tokens_stop_working(
    client: AsyncClient, app: FastAPI, api: IdentityApi
) -> None:
    user = await api.user()
    pair = await api.token(user.email)
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(update(User).where(User.email == user.email).values(is_active=False))
    problem(await client.get("/v1/me", headers=user.headers), 401, "invalid_token")
    problem(
        await client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": user.email, "password": PASSWORD},
        ),
        400,
        "invalid_grant",
    )
    status, body = await _refresh(client, str(pair["refresh_token"]))
    assert (status, body["code"]) == (401, "invalid_refresh_token")


async def test_a_login_without_a_password_cannot_use_the_password_grant(
    client: AsyncClient, app: FastAPI, api: IdentityApi
) -> None:
    async with app.state.sessionmaker() as session, session.begin():
        from app.identity import service

        await service.create_user(session, app.state.auth.passwords, "nopass@example.org", None)
    for password in ("", "anything at all", PASSWORD):
        problem(
            await client.post(
                "/v1/auth/token",
                data={
                    "grant_type": "password",
                    "username": "nopass@example.org",
                    "password": password,
                },
            ),
            400,
            "invalid_grant",
        )


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "password", "password": PASSWORD},
        {"grant_type": "password", "username": "someone@example.org"},
    ],
    ids=["no-username", "no-password"],
)
async def test_password_grant_needs_both_fields(client: AsyncClient, form: dict[str, str]) -> None:
    problem(await client.post("/v1/auth/token", data=form), 400, "invalid_grant")


@pytest.mark.parametrize("grant_type", ["authorization_code", "implicit", "refresh_token", ""])
async def test_unsupported_grant_types_are_refused(client: AsyncClient, grant_type: str) -> None:
    response = await client.post(
        "/v1/auth/token", data={"grant_type": grant_type, "username": "a@b.org", "password": "x"}
    )
    if grant_type == "":
        problem(response, 422, "validation_error")
    else:
        problem(response, 400, "unsupported_grant_type")


async def test_token_endpoint_without_a_grant_type_is_a_validation_error(
    client: AsyncClient,
) -> None:
    body = problem(
        await client.post("/v1/auth/token", data={"username": "a@b.org", "password": "x"}),
        422,
        "validation_error",
    )
    assert any(e["loc"][-1] == "grant_type" for e in body["errors"])


# --- throttling --------------------------------------------------------------------------


@pytest.fixture
async def strict_client(database_url: str) -> AsyncIterator[AsyncClient]:
    """An app that allows two failures per account and four per client address."""
    settings = make_settings(
        database_url, login_max_failures_per_account=2, login_max_failures_per_address=4
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = ASGITransport(app=application, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def _sign_up(client: AsyncClient) -> str:
    email = f"{unique('throttle')}@example.org"
    expect(await client.post("/v1/users", json={"email": email, "password": PASSWORD}), 201)
    return email


async def test_failed_logins_are_throttled_per_account(strict_client: AsyncClient) -> None:
    email = await _sign_up(strict_client)
    for _ in range(2):
        assert (await _password_grant(strict_client, email, "wrong guess here"))["_status"] == 400
    # Even the right password is refused now: the account is locked for the window.
    response = await strict_client.post(
        "/v1/auth/token", data={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    problem(response, 429, "too_many_login_attempts")
    assert int(response.headers["Retry-After"]) >= 1
    # The lock is on that account only: another person from elsewhere still signs in... and
    # from the same address, as long as the address budget is not spent.
    other = await _sign_up(strict_client)
    assert (await _password_grant(strict_client, other))["_status"] == 200


async def test_a_success_clears_the_account_failures(strict_client: AsyncClient) -> None:
    email = await _sign_up(strict_client)
    assert (await _password_grant(strict_client, email, "wrong guess here"))["_status"] == 400
    assert (await _password_grant(strict_client, email))["_status"] == 200
    assert (await _password_grant(strict_client, email, "wrong guess here"))["_status"] == 400
    assert (await _password_grant(strict_client, email))["_status"] == 200


async def test_failed_logins_are_throttled_per_client_address(strict_client: AsyncClient) -> None:
    victims = [await _sign_up(strict_client) for _ in range(5)]
    # One failure on each of four accounts: no account reaches its limit, the address does.
    for email in victims[:4]:
        assert (await _password_grant(strict_client, email, "wrong guess here"))["_status"] == 400
    response = await strict_client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": victims[4], "password": PASSWORD},
    )
    problem(response, 429, "too_many_login_attempts")
    assert int(response.headers["Retry-After"]) >= 1


async def test_unknown_emails_count_towards_the_address_limit(
    strict_client: AsyncClient,
) -> None:
    email = await _sign_up(strict_client)
    for i in range(4):
        body = await _password_grant(strict_client, f"ghost{i}@example.org", "whatever it is")
        assert body["_status"] == 400
    problem(
        await strict_client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": PASSWORD},
        ),
        429,
        "too_many_login_attempts",
    )


async def test_the_account_limit_ignores_case_and_spaces(strict_client: AsyncClient) -> None:
    email = await _sign_up(strict_client)
    for variant in (email.upper(), f" {email} "):
        assert (await _password_grant(strict_client, variant, "wrong guess here"))["_status"] == 400
    problem(
        await strict_client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": PASSWORD},
        ),
        429,
        "too_many_login_attempts",
    )


# --- refresh rotation --------------------------------------------------------------------


async def test_refresh_rotates_the_pair(client: AsyncClient, api: IdentityApi) -> None:
    user = await api.user()
    first = await api.token(user.email)
    status, second = await _refresh(client, first["refresh_token"])
    assert status == 200
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    expect(await client.get("/v1/me", headers=bearer(str(second["access_token"]))), 200)
    # The new refresh token works once more.
    status, third = await _refresh(client, str(second["refresh_token"]))
    assert status == 200
    expect(await client.get("/v1/me", headers=bearer(str(third["access_token"]))), 200)


async def test_reusing_a_rotated_refresh_token_ends_the_whole_sign_in(
    client: AsyncClient, api: IdentityApi
) -> None:
    user = await api.user()
    first = await api.token(user.email)
    _, second = await _refresh(client, first["refresh_token"])
    _, third = await _refresh(client, str(second["refresh_token"]))

    status, body = await _refresh(client, first["refresh_token"])  # a leaked copy comes back
    assert (status, body["code"]) == (401, "refresh_token_reused")

    # The revocation was kept although that request failed: the newest token is dead too.
    status, body = await _refresh(client, str(third["refresh_token"]))
    assert (status, body["code"]) == (401, "invalid_refresh_token")
    status, body = await _refresh(client, str(second["refresh_token"]))
    assert status == 401


async def test_reuse_ends_only_that_sign_in(client: AsyncClient, api: IdentityApi) -> None:
    user = await api.user()
    phone = await api.token(user.email)
    laptop = await api.token(user.email)
    await _refresh(client, phone["refresh_token"])
    status, _ = await _refresh(client, phone["refresh_token"])
    assert status == 401
    status, _ = await _refresh(client, laptop["refresh_token"])
    assert status == 200


async def test_logout_ends_the_sign_in(client: AsyncClient, api: IdentityApi) -> None:
    user = await api.user()
    first = await api.token(user.email)
    _, second = await _refresh(client, first["refresh_token"])
    other = await api.token(user.email)

    response = await client.post("/v1/auth/logout", json={"refresh_token": first["refresh_token"]})
    assert response.status_code == 204
    status, body = await _refresh(client, str(second["refresh_token"]))
    assert (status, body["code"]) == (401, "invalid_refresh_token")
    # Logging out twice, or with a token nobody issued, is not an error and reveals nothing.
    for token in (first["refresh_token"], "never-issued"):
        response = await client.post("/v1/auth/logout", json={"refresh_token": token})
        assert response.status_code == 204
    # Another sign-in of the same person is untouched.
    status, _ = await _refresh(client, other["refresh_token"])
    assert status == 200


async def test_an_expired_refresh_token_is_refused(
    client: AsyncClient, app: FastAPI, api: IdentityApi
) -> None:
    user = await api.user()
    pair = await api.token(user.email)
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(RefreshToken).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    status, body = await _refresh(client, pair["refresh_token"])
    assert (status, body["code"]) == (401, "invalid_refresh_token")
    # Refused, not rotated: the same token keeps being refused the same way (no reuse alarm).
    status, body = await _refresh(client, pair["refresh_token"])
    assert (status, body["code"]) == (401, "invalid_refresh_token")


@pytest.mark.parametrize("token", ["never-issued", "x" * 200])
async def test_an_unknown_refresh_token_is_refused(client: AsyncClient, token: str) -> None:
    response = await client.post("/v1/auth/refresh", json={"refresh_token": token})
    problem(response, 401, "invalid_refresh_token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "body", [{}, {"refresh_token": ""}, {"refresh_token": "x" * 201}, {"refresh_token": 5}]
)
async def test_a_malformed_refresh_request_is_a_validation_error(
    client: AsyncClient, body: dict[str, object]
) -> None:
    problem(await client.post("/v1/auth/refresh", json=body), 422, "validation_error")


# --- client credentials ------------------------------------------------------------------


async def test_client_credentials_with_form_fields_and_basic(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, admin = await api.community()
    partner = await api.partner(community["id"], admin, ["members:read", "community:read"])

    form = expect(
        await client.post(
            "/v1/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": partner.client_id,
                "client_secret": partner.client_secret,
            },
        ),
        200,
    )
    assert form["scope"] == "community:read members:read"
    assert form.get("refresh_token") is None

    basic = base64.b64encode(f"{partner.client_id}:{partner.client_secret}".encode()).decode()
    via_basic = expect(
        await client.post(
            "/v1/auth/token",
            data={"grant_type": "client_credentials", "scope": "members:read"},
            headers={"Authorization": f"Basic {basic}"},
        ),
        200,
    )
    assert via_basic["scope"] == "members:read"
    narrowed = bearer(via_basic["access_token"])
    expect(await client.get(f"/v1/communities/{community['id']}/members", headers=narrowed), 200)
    # The narrowed token does not carry community:read although the client holds it.
    problem(
        await client.get(f"/v1/communities/{community['id']}", headers=narrowed),
        403,
        "insufficient_scope",
    )
    # A partner is not a person: /v1/me is for people.
    problem(await client.get("/v1/me", headers=narrowed), 403, "user_required")


async def test_client_credentials_refusals(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    partner = await api.partner(community["id"], admin, ["members:read"])

    def form(**fields: str) -> dict[str, str]:
        return {"grant_type": "client_credentials", **fields}

    body = problem(
        await client.post(
            "/v1/auth/token",
            data=form(
                client_id=partner.client_id,
                client_secret=partner.client_secret,
                scope="members:read ledger:write",
            ),
        ),
        400,
        "invalid_scope",
    )
    assert "ledger:write" in body["detail"]
    for fields in (
        {"client_id": partner.client_id, "client_secret": "wrong-secret"},
        {"client_id": "tbc_nobody", "client_secret": partner.client_secret},
        {"client_id": partner.client_id},
        {},
    ):
        response = await client.post("/v1/auth/token", data=form(**fields))
        problem(response, 401, "invalid_client")
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    for header in ("Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode()):
        problem(
            await client.post("/v1/auth/token", data=form(), headers={"Authorization": header}),
            401,
            "invalid_client",
        )


async def test_a_revoked_client_cannot_sign_in_and_its_tokens_stop_working(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, admin = await api.community()
    partner = await api.partner(community["id"], admin, ["members:read"])
    members_url = f"/v1/communities/{community['id']}/members"
    expect(await client.get(members_url, headers=partner.headers), 200)

    revoked = expect(
        await client.delete(
            f"/v1/communities/{community['id']}/clients/{partner.client_id}",
            headers=admin.headers,
        ),
        200,
    )
    assert revoked["revoked_at"] is not None

    response = await client.get(members_url, headers=partner.headers)
    problem(response, 401, "invalid_token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    problem(
        await client.post(
            "/v1/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": partner.client_id,
                "client_secret": partner.client_secret,
            },
        ),
        401,
        "invalid_client",
    )
    listed = expect(
        await client.get(f"/v1/communities/{community['id']}/clients", headers=admin.headers), 200
    )
    assert [c["revoked_at"] is not None for c in listed] == [True]
    assert all("client_secret" not in c for c in listed)


async def test_me_lists_memberships(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    member = await api.member(community["id"], admin, kind="organization")
    me = expect(await client.get("/v1/me", headers=member.headers), 200)
    assert me["user"]["email"] == member.email
    [membership] = me["memberships"]
    assert membership["member_id"] == member.member_id
    assert membership["community_id"] == community["id"]
    assert membership["community_slug"] == community["slug"]
    assert (membership["kind"], membership["role"], membership["status"]) == (
        "organization",
        "member",
        "active",
    )
    problem(await client.get("/v1/me"), 401, "invalid_token")

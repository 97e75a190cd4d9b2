"""Forged, stale and malformed access tokens: every one is a 401 ``invalid_token``."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from jose import jwt
from sqlalchemy import delete

from app.access.principal import client_subject, user_subject
from app.core.clock import utcnow
from app.models import User
from tests.factories import IdentityApi, bearer, expect, problem

pytestmark = pytest.mark.anyio

HOUR = 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _segment(value: Any) -> str:
    return _b64(json.dumps(value).encode())


def _claims(app: FastAPI, subject: str, **changes: Any) -> dict[str, Any]:
    settings = app.state.settings
    now = int(utcnow().timestamp())
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "typ": "access",
    }
    for name, value in changes.items():
        if value is _DROP:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


_DROP = object()


def _sign(app: FastAPI, claims: dict[str, Any], *, key: str | None = None) -> str:
    secret = key or app.state.settings.secret_key.get_secret_value()
    return str(jwt.encode(claims, secret, algorithm="HS256"))


def _now() -> int:
    return int(utcnow().timestamp())


# Each case builds a token for the user ``subject`` (who exists and may call /v1/me).
TokenCase = Callable[[FastAPI, str], str]


def _alg_none(app: FastAPI, subject: str) -> str:
    header = _segment({"alg": "none", "typ": "JWT"})
    return f"{header}.{_segment(_claims(app, subject))}."


def _alg_none_with_signature(app: FastAPI, subject: str) -> str:
    good = _sign(app, _claims(app, subject))
    _, payload, signature = good.split(".")
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}"


def _hs512(app: FastAPI, subject: str) -> str:
    secret = app.state.settings.secret_key.get_secret_value()
    return str(jwt.encode(_claims(app, subject), secret, algorithm="HS512"))


def _rs256_header(app: FastAPI, subject: str) -> str:
    # RS256 claimed in the header, "signed" with the server's secret as if it were a public key.
    good = _sign(app, _claims(app, subject))
    _, payload, signature = good.split(".")
    return f"{_segment({'alg': 'RS256', 'typ': 'JWT'})}.{payload}.{signature}"


def _tampered(app: FastAPI, subject: str) -> str:
    good = _sign(app, _claims(app, subject, sub=user_subject(uuid.uuid4())))
    header, _, signature = good.split(".")
    return f"{header}.{_segment(_claims(app, subject))}.{signature}"


def _signature_stripped(app: FastAPI, subject: str) -> str:
    header, payload, _ = _sign(app, _claims(app, subject)).split(".")
    return f"{header}.{payload}."


def _non_object_payload(app: FastAPI, subject: str) -> str:
    secret = app.state.settings.secret_key.get_secret_value()
    from jose import jws

    return str(jws.sign(b"[1, 2, 3]", secret, algorithm="HS256"))


CASES: dict[str, TokenCase] = {
    "alg-none": _alg_none,
    "alg-none-with-signature": _alg_none_with_signature,
    "hs256-wrong-key": lambda app, s: _sign(app, _claims(app, s), key="x" * 48),
    "hs512": _hs512,
    "rs256-header": _rs256_header,
    "expired": lambda app, s: _sign(app, _claims(app, s, iat=_now() - 2 * HOUR, exp=_now() - HOUR)),
    "nbf-future": lambda app, s: _sign(app, _claims(app, s, nbf=_now() + HOUR)),
    "iat-future": lambda app, s: _sign(app, _claims(app, s, iat=_now() + HOUR, nbf=_now())),
    "wrong-aud": lambda app, s: _sign(app, _claims(app, s, aud="someone-else")),
    "wrong-iss": lambda app, s: _sign(app, _claims(app, s, iss="evil-issuer")),
    "no-sub": lambda app, s: _sign(app, _claims(app, s, sub=_DROP)),
    "no-exp": lambda app, s: _sign(app, _claims(app, s, exp=_DROP)),
    "no-jti": lambda app, s: _sign(app, _claims(app, s, jti=_DROP)),
    "no-iat": lambda app, s: _sign(app, _claims(app, s, iat=_DROP)),
    "no-aud": lambda app, s: _sign(app, _claims(app, s, aud=_DROP)),
    "no-iss": lambda app, s: _sign(app, _claims(app, s, iss=_DROP)),
    "no-typ": lambda app, s: _sign(app, _claims(app, s, typ=_DROP)),
    "typ-refresh": lambda app, s: _sign(app, _claims(app, s, typ="refresh")),
    "exp-not-a-number": lambda app, s: _sign(app, _claims(app, s, exp="tomorrow")),
    "iat-not-a-number": lambda app, s: _sign(app, _claims(app, s, iat="today")),
    "sub-not-a-string": lambda app, s: _sign(app, _claims(app, s, sub=12345)),
    "scope-not-a-string": lambda app, s: _sign(app, _claims(app, s, scope=["members:read"])),
    "tampered-payload": _tampered,
    "signature-stripped": _signature_stripped,
    "payload-not-an-object": _non_object_payload,
    "garbage": lambda app, s: "this-is-not-a-token",
    "three-garbage-parts": lambda app, s: "a.b.c",
    "header-not-an-object": lambda app, s: f"{_b64(b'[1]')}.{_segment({})}.sig",
    "header-not-json": lambda app, s: f"{_b64(b'{nope')}.{_segment({})}.sig",
    "unknown-user": lambda app, s: _sign(app, _claims(app, user_subject(uuid.uuid4()))),
    "user-id-not-a-uuid": lambda app, s: _sign(app, _claims(app, "user:not-a-uuid")),
    "unknown-subject-kind": lambda app, s: _sign(app, _claims(app, s.replace("user:", "robot:"))),
    "unknown-client": lambda app, s: _sign(app, _claims(app, client_subject(uuid.uuid4()))),
}


@pytest.fixture
async def subject(api: IdentityApi) -> str:
    user = await api.user()
    return user_subject(uuid.UUID(user.user_id))


async def test_a_hand_built_token_with_the_right_key_is_accepted(
    client: AsyncClient, app: FastAPI, subject: str
) -> None:
    """The control for every attack below: only the named defect differs."""
    token = _sign(app, _claims(app, subject))
    expect(await client.get("/v1/me", headers=bearer(token)), 200)


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_tokens_are_refused(
    client: AsyncClient, app: FastAPI, subject: str, case: str
) -> None:
    token = CASES[case](app, subject)
    for route in ("/v1/me", "/v1/communities"):
        response = await client.get(route, headers=bearer(token))
        problem(response, 401, "invalid_token")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Token abc"},
    ],
    ids=["none", "empty", "bearer-only", "bearer-space", "basic", "other-scheme"],
)
async def test_missing_tokens_are_refused(client: AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get("/v1/me", headers=headers)
    problem(response, 401, "invalid_token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_token_of_a_deleted_user_is_refused(
    client: AsyncClient, app: FastAPI, api: IdentityApi
) -> None:
    email = "soon-gone@example.org"
    body = expect(
        await client.post("/v1/users", json={"email": email, "password": "long enough pw"}), 201
    )
    token = _sign(app, _claims(app, user_subject(uuid.UUID(body["id"]))))
    expect(await client.get("/v1/me", headers=bearer(token)), 200)
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(delete(User).where(User.email == email))
    problem(await client.get("/v1/me", headers=bearer(token)), 401, "invalid_token")


async def test_a_client_token_never_carries_more_than_the_client_holds(
    client: AsyncClient, app: FastAPI, api: IdentityApi
) -> None:
    community, admin = await api.community()
    partner = await api.partner(community["id"], admin, ["members:read"])
    listed = expect(
        await client.get(f"/v1/communities/{community['id']}/clients", headers=admin.headers), 200
    )
    internal_id = uuid.UUID(next(c["id"] for c in listed if c["client_id"] == partner.client_id))
    # Even a validly signed token that claims extra scopes gets only what the client holds.
    token = _sign(
        app,
        _claims(app, client_subject(internal_id), scope="members:read members:write"),
    )
    expect(
        await client.get(f"/v1/communities/{community['id']}/members", headers=bearer(token)), 200
    )
    problem(
        await client.post(
            f"/v1/communities/{community['id']}/members",
            json={"display_name": "Smuggled", "kind": "citizen"},
            headers=bearer(token),
        ),
        403,
        "insufficient_scope",
    )

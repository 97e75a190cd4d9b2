"""Build users, communities and members through the public API, the way clients do."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient, Response

from app.identity import service

PASSWORD = "correct horse battery staple"
_seq = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_seq)}{uuid.uuid4().hex[:4]}"


@dataclass
class Actor:
    email: str
    headers: dict[str, str]
    user_id: str
    member: dict[str, Any] = field(default_factory=dict)

    @property
    def member_id(self) -> str:
        return str(self.member["id"])

    @property
    def account_id(self) -> str:
        return str(self.member["account_id"])


def expect(response: Response, status: int) -> Any:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    if response.content and response.headers.get("content-type", "").endswith("json"):
        return response.json()
    return None


class Api:
    def __init__(self, client: AsyncClient, app: FastAPI) -> None:
        self.client = client
        self.app = app

    async def token(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )
        body: dict[str, Any] = expect(response, 200)
        return body

    async def login(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        token = await self.token(email, password)
        return {"Authorization": f"Bearer {token['access_token']}"}

    async def user(self, email: str | None = None) -> Actor:
        email = email or f"{unique('user')}@example.org"
        body = expect(
            await self.client.post("/v1/users", json={"email": email, "password": PASSWORD}), 201
        )
        return Actor(email=email, headers=await self.login(email), user_id=body["id"])

    async def platform_admin(self) -> Actor:
        email = f"{unique('admin')}@example.org"
        async with self.app.state.sessionmaker() as session, session.begin():
            user = await service.create_user(
                session, self.app.state.auth.passwords, email, PASSWORD, is_platform_admin=True
            )
            user_id = str(user.id)
        return Actor(email=email, headers=await self.login(email), user_id=user_id)

    async def community(
        self, admin: Actor | None = None, **fields: Any
    ) -> tuple[dict[str, Any], Actor]:
        """A community whose first admin member is ``admin`` (a new platform admin if None)."""
        admin = admin or await self.platform_admin()
        payload = {
            "slug": unique("tb-"),
            "name": "Test Time Bank",
            "creator_member": {"display_name": "Founding admin", "kind": "professional"},
            **fields,
        }
        community = expect(
            await self.client.post("/v1/communities", json=payload, headers=admin.headers), 201
        )
        me = expect(await self.client.get("/v1/me", headers=admin.headers), 200)
        membership = next(m for m in me["memberships"] if m["community_id"] == community["id"])
        admin.member = expect(
            await self.client.get(f"/v1/members/{membership['member_id']}", headers=admin.headers),
            200,
        )
        return community, admin

    async def member(
        self,
        community_id: str,
        by: Actor,
        *,
        role: str = "member",
        kind: str = "citizen",
        with_login: bool = True,
        name: str | None = None,
    ) -> Actor:
        """A member added by a coordinator/admin ``by``; with a login unless told otherwise."""
        email = f"{unique('m')}@example.org"
        payload: dict[str, Any] = {
            "display_name": name or email.split("@")[0],
            "kind": kind,
            "role": role,
        }
        user_id = ""
        if with_login:
            user = expect(
                await self.client.post("/v1/users", json={"email": email, "password": PASSWORD}),
                201,
            )
            payload["user_email"] = email
            user_id = user["id"]
        member = expect(
            await self.client.post(
                f"/v1/communities/{community_id}/members", json=payload, headers=by.headers
            ),
            201,
        )
        headers = await self.login(email) if with_login else {}
        return Actor(email=email, headers=headers, user_id=user_id, member=member)


# --- helpers for the identity and access suites ------------------------------------------


def problem(response: Response, status: int, code: str) -> dict[str, Any]:
    """Assert an RFC 9457 refusal with this status and stable ``code``; return the document."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json"), (
        response.headers["content-type"]
    )
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status, body
    return body


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


@dataclass
class Partner:
    """A partner service registered with one community."""

    client_id: str
    client_secret: str
    scopes: list[str]
    headers: dict[str, str]


class IdentityApi(Api):
    """``Api`` plus the partner-client and join-request steps the identity tests need."""

    async def partner(self, community_id: str, by: Actor, scopes: list[str]) -> Partner:
        created = expect(
            await self.client.post(
                f"/v1/communities/{community_id}/clients",
                json={"name": unique("partner "), "scopes": scopes},
                headers=by.headers,
            ),
            201,
        )
        token = expect(
            await self.client.post(
                "/v1/auth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": created["client_id"],
                    "client_secret": created["client_secret"],
                },
            ),
            200,
        )
        return Partner(
            client_id=created["client_id"],
            client_secret=created["client_secret"],
            scopes=scopes,
            headers=bearer(token["access_token"]),
        )

    async def join(self, community_id: str, user: Actor, **fields: Any) -> Actor:
        """``user`` asks to join: the membership is pending until a coordinator approves."""
        payload = {"display_name": unique("joiner "), "kind": "citizen", **fields}
        user.member = expect(
            await self.client.post(
                f"/v1/communities/{community_id}/members", json=payload, headers=user.headers
            ),
            201,
        )
        return user

    async def bare_community(self, by: Actor, **fields: Any) -> dict[str, Any]:
        """A community created by platform admin ``by`` without joining it."""
        payload = {"slug": unique("tb-"), "name": "Test Time Bank", **fields}
        community: dict[str, Any] = expect(
            await self.client.post("/v1/communities", json=payload, headers=by.headers), 201
        )
        return community

    async def get_member(self, member_id: str, by: Actor) -> dict[str, Any]:
        body: dict[str, Any] = expect(
            await self.client.get(f"/v1/members/{member_id}", headers=by.headers), 200
        )
        return body

    async def get_community(self, community_id: str, by: Actor) -> dict[str, Any]:
        body: dict[str, Any] = expect(
            await self.client.get(f"/v1/communities/{community_id}", headers=by.headers), 200
        )
        return body

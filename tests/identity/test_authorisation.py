"""Who may call which identity route: every route against every kind of caller.

Refusals are exact (status and ``code``). Outsiders asking about a member id get 404, never
403, so ids reveal nothing about communities they cannot see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from httpx import AsyncClient

from tests.factories import Actor, IdentityApi, expect, unique

pytestmark = pytest.mark.anyio

ALL_SCOPES = ["community:read", "members:read", "members:write"]


@dataclass
class World:
    community: dict[str, Any]
    other_community: dict[str, Any]
    target: Actor  # an active plain member of the community, acted upon
    victim_client_id: str  # a partner client of the community, revoked by the revoke route
    other_client_id: str  # a partner client of the other community
    callers: dict[str, dict[str, str]]  # caller name -> request headers


@pytest.fixture
async def world(api: IdentityApi, client: AsyncClient) -> World:
    padmin = await api.platform_admin()
    community = await api.bare_community(padmin)
    cid = community["id"]
    admin = await api.member(cid, padmin, role="admin")
    coordinator = await api.member(cid, admin, role="coordinator", kind="professional")
    member = await api.member(cid, coordinator)
    target = await api.member(cid, coordinator, kind="organization")
    suspended = await api.member(cid, coordinator)
    expect(
        await client.patch(
            f"/v1/members/{suspended.member_id}",
            json={"status": "suspended"},
            headers=coordinator.headers,
        ),
        200,
    )
    pending = await api.join(cid, await api.user())
    outsider = await api.user()

    other_community = await api.bare_community(padmin)
    other_admin = await api.member(other_community["id"], padmin, role="admin")
    other_member = await api.member(other_community["id"], other_admin)

    partner_rw = await api.partner(cid, admin, ALL_SCOPES)
    partner_none = await api.partner(cid, admin, ["ledger:read"])
    partner_other = await api.partner(other_community["id"], other_admin, ALL_SCOPES)
    victim = await api.partner(cid, admin, ["ledger:read"])

    return World(
        community=community,
        other_community=other_community,
        target=target,
        victim_client_id=victim.client_id,
        other_client_id=partner_other.client_id,
        callers={
            "anonymous": {},
            "outsider": outsider.headers,
            "pending": pending.headers,
            "suspended": suspended.headers,
            "member": member.headers,
            "coordinator": coordinator.headers,
            "admin": admin.headers,
            "platform_admin": padmin.headers,
            "other_member": other_member.headers,
            "partner": partner_rw.headers,
            "partner_no_scope": partner_none.headers,
            "partner_other": partner_other.headers,
        },
    )


@dataclass(frozen=True)
class Route:
    method: str
    path: Callable[[World], str]
    body: Callable[[], dict[str, Any]] | None = None


ROUTES: dict[str, Route] = {
    "create_community": Route(
        "POST", lambda w: "/v1/communities", lambda: {"slug": unique("m-"), "name": "New"}
    ),
    "list_communities": Route("GET", lambda w: "/v1/communities"),
    "get_community": Route("GET", lambda w: f"/v1/communities/{w.community['id']}"),
    "update_community": Route(
        "PATCH",
        lambda w: f"/v1/communities/{w.community['id']}",
        lambda: {"description": unique("described ")},
    ),
    "add_member": Route(
        "POST",
        lambda w: f"/v1/communities/{w.community['id']}/members",
        lambda: {"display_name": unique("new "), "kind": "citizen"},
    ),
    "list_members": Route("GET", lambda w: f"/v1/communities/{w.community['id']}/members"),
    "get_member": Route("GET", lambda w: f"/v1/members/{w.target.member_id}"),
    "update_member": Route(
        "PATCH", lambda w: f"/v1/members/{w.target.member_id}", lambda: {"bio": unique("bio ")}
    ),
    "create_client": Route(
        "POST",
        lambda w: f"/v1/communities/{w.community['id']}/clients",
        lambda: {"name": "GP practice", "scopes": ["members:read"]},
    ),
    "list_clients": Route("GET", lambda w: f"/v1/communities/{w.community['id']}/clients"),
    "revoke_client": Route(
        "DELETE", lambda w: f"/v1/communities/{w.community['id']}/clients/{w.victim_client_id}"
    ),
    "me": Route("GET", lambda w: "/v1/me"),
}

Outcome = tuple[int, str | None]  # status, problem code (None on success)

OK: Outcome = (200, None)
CREATED: Outcome = (201, None)
NO_TOKEN: Outcome = (401, "invalid_token")
NOT_PLATFORM_ADMIN: Outcome = (403, "platform_admin_required")
NOT_A_MEMBER: Outcome = (403, "not_a_member")
INACTIVE: Outcome = (403, "membership_inactive")
ROLE: Outcome = (403, "insufficient_role")
SCOPE: Outcome = (403, "insufficient_scope")
USER_REQUIRED: Outcome = (403, "user_required")
NO_COMMUNITY: Outcome = (404, "community_not_found")
NO_MEMBER: Outcome = (404, "member_not_found")
ALREADY: Outcome = (409, "already_member")


def _admin_only(success: Outcome) -> dict[str, Outcome]:
    return {
        "anonymous": NO_TOKEN,
        "outsider": NOT_A_MEMBER,
        "pending": INACTIVE,
        "suspended": INACTIVE,
        "member": ROLE,
        "coordinator": ROLE,
        "admin": success,
        "platform_admin": success,
        "other_member": NOT_A_MEMBER,
        "partner": SCOPE,
        "partner_no_scope": SCOPE,
        "partner_other": NO_COMMUNITY,
    }


EXPECTED: dict[str, dict[str, Outcome]] = {
    "create_community": {
        "anonymous": NO_TOKEN,
        "outsider": NOT_PLATFORM_ADMIN,
        "pending": NOT_PLATFORM_ADMIN,
        "suspended": NOT_PLATFORM_ADMIN,
        "member": NOT_PLATFORM_ADMIN,
        "coordinator": NOT_PLATFORM_ADMIN,
        "admin": NOT_PLATFORM_ADMIN,
        "platform_admin": CREATED,
        "other_member": NOT_PLATFORM_ADMIN,
        "partner": NOT_PLATFORM_ADMIN,
        "partner_no_scope": NOT_PLATFORM_ADMIN,
        "partner_other": NOT_PLATFORM_ADMIN,
    },
    "list_communities": {
        "anonymous": NO_TOKEN,
        "outsider": OK,
        "pending": OK,
        "suspended": OK,
        "member": OK,
        "coordinator": OK,
        "admin": OK,
        "platform_admin": OK,
        "other_member": OK,
        "partner": OK,
        "partner_no_scope": OK,
        "partner_other": OK,
    },
    "get_community": {
        "anonymous": NO_TOKEN,
        "outsider": OK,
        "pending": OK,
        "suspended": OK,
        "member": OK,
        "coordinator": OK,
        "admin": OK,
        "platform_admin": OK,
        "other_member": OK,
        "partner": OK,
        "partner_no_scope": SCOPE,
        "partner_other": NO_COMMUNITY,
    },
    "update_community": _admin_only(OK),
    "add_member": {
        "anonymous": NO_TOKEN,
        "outsider": CREATED,  # a request to join
        "pending": ALREADY,
        "suspended": ALREADY,
        "member": ALREADY,
        "coordinator": CREATED,
        "admin": CREATED,
        "platform_admin": CREATED,
        "other_member": CREATED,  # a request to join
        "partner": CREATED,
        "partner_no_scope": SCOPE,
        "partner_other": NO_COMMUNITY,
    },
    "list_members": {
        "anonymous": NO_TOKEN,
        "outsider": NOT_A_MEMBER,
        "pending": INACTIVE,
        "suspended": INACTIVE,
        "member": OK,
        "coordinator": OK,
        "admin": OK,
        "platform_admin": OK,
        "other_member": NOT_A_MEMBER,
        "partner": OK,
        "partner_no_scope": SCOPE,
        "partner_other": NO_COMMUNITY,
    },
    "get_member": {
        "anonymous": NO_TOKEN,
        "outsider": NO_MEMBER,
        "pending": INACTIVE,
        "suspended": INACTIVE,
        "member": OK,
        "coordinator": OK,
        "admin": OK,
        "platform_admin": OK,
        "other_member": NO_MEMBER,
        "partner": OK,
        "partner_no_scope": SCOPE,
        "partner_other": NO_MEMBER,
    },
    "update_member": {
        "anonymous": NO_TOKEN,
        "outsider": NO_MEMBER,
        "pending": INACTIVE,
        "suspended": INACTIVE,
        "member": ROLE,
        "coordinator": OK,
        "admin": OK,
        "platform_admin": OK,
        "other_member": NO_MEMBER,
        "partner": OK,
        "partner_no_scope": SCOPE,
        "partner_other": NO_MEMBER,
    },
    "create_client": _admin_only(CREATED),
    "list_clients": _admin_only(OK),
    "revoke_client": _admin_only(OK),
    "me": {
        "anonymous": NO_TOKEN,
        "outsider": OK,
        "pending": OK,
        "suspended": OK,
        "member": OK,
        "coordinator": OK,
        "admin": OK,
        "platform_admin": OK,
        "other_member": OK,
        "partner": USER_REQUIRED,
        "partner_no_scope": USER_REQUIRED,
        "partner_other": USER_REQUIRED,
    },
}


def test_the_matrix_covers_every_route_and_caller() -> None:
    callers = set(EXPECTED["me"])
    assert set(EXPECTED) == set(ROUTES)
    for route, outcomes in EXPECTED.items():
        assert set(outcomes) == callers, route


@pytest.mark.parametrize("route_name", list(ROUTES))
async def test_authorisation_matrix(client: AsyncClient, world: World, route_name: str) -> None:
    route = ROUTES[route_name]
    # Refusals first, so that a successful write cannot change what a later caller sees.
    order = sorted(EXPECTED[route_name].items(), key=lambda item: item[1][0] < 400)
    mismatches = []
    for caller, (status, code) in order:
        response = await client.request(
            route.method,
            route.path(world),
            json=route.body() if route.body else None,
            headers=world.callers[caller],
        )
        got_code = response.json().get("code") if response.status_code >= 400 else None
        if (response.status_code, got_code) != (status, code):
            mismatches.append(
                f"{caller}: expected {status} {code}, got {response.status_code} {got_code}"
            )
        elif status >= 400:
            assert response.headers["content-type"].startswith("application/problem+json")
            if status == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert mismatches == []


async def test_partners_list_only_their_own_community(client: AsyncClient, world: World) -> None:
    for caller, community in (
        ("partner", world.community),
        ("partner_no_scope", world.community),
        ("partner_other", world.other_community),
    ):
        page = expect(await client.get("/v1/communities", headers=world.callers[caller]), 200)
        assert [c["id"] for c in page["items"]] == [community["id"]], caller
    page = expect(await client.get("/v1/communities", headers=world.callers["outsider"]), 200)
    assert {world.community["id"], world.other_community["id"]} <= {c["id"] for c in page["items"]}


async def test_a_join_request_is_pending_and_a_coordinators_addition_active(
    client: AsyncClient, world: World
) -> None:
    url = f"/v1/communities/{world.community['id']}/members"
    outcomes = {}
    for caller in ("outsider", "other_member", "coordinator", "partner"):
        body = expect(
            await client.post(
                url, json={"display_name": caller, "kind": "citizen"}, headers=world.callers[caller]
            ),
            201,
        )
        outcomes[caller] = (body["status"], body["has_login"], body["joined_at"] is not None)
    assert outcomes == {
        "outsider": ("pending", True, False),
        "other_member": ("pending", True, False),
        "coordinator": ("active", False, True),
        "partner": ("active", False, True),
    }


async def test_inactive_and_pending_members_still_see_their_own_membership(
    client: AsyncClient, api: IdentityApi, world: World
) -> None:
    for caller in ("pending", "suspended"):
        me = expect(await client.get("/v1/me", headers=world.callers[caller]), 200)
        [membership] = me["memberships"]
        own = expect(
            await client.get(
                f"/v1/members/{membership['member_id']}", headers=world.callers[caller]
            ),
            200,
        )
        assert own["status"] == membership["status"]


async def test_unknown_ids_answer_404(client: AsyncClient, world: World) -> None:
    headers = world.callers["platform_admin"]
    missing = "0190a0a0-0000-7000-8000-000000000000"
    for method, path, code in (
        ("GET", f"/v1/communities/{missing}", "community_not_found"),
        ("PATCH", f"/v1/communities/{missing}", "community_not_found"),
        ("GET", f"/v1/communities/{missing}/members", "community_not_found"),
        ("GET", f"/v1/members/{missing}", "member_not_found"),
        ("PATCH", f"/v1/members/{missing}", "member_not_found"),
        ("GET", "/v1/members/not-an-id", "member_not_found"),
        ("GET", "/v1/communities/not-an-id", "community_not_found"),
        ("GET", f"/v1/communities/{'9' * 300}", "community_not_found"),
        (
            "DELETE",
            f"/v1/communities/{world.community['id']}/clients/tbc_nobody",
            "client_not_found",
        ),
        (
            "DELETE",
            f"/v1/communities/{world.community['id']}/clients/{world.other_client_id}",
            "client_not_found",
        ),
    ):
        response = await client.request(
            method, path, headers=headers, json={} if method == "PATCH" else None
        )
        assert (response.status_code, response.json()["code"]) == (404, code), (method, path)
    # The other community's partner was not revoked through this community's path.
    expect(await client.get("/v1/communities", headers=world.callers["partner_other"]), 200)

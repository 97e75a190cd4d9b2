"""Bad input is refused with a problem document, and refused requests change nothing."""

from __future__ import annotations

import re
from typing import Any

import pytest
from httpx import AsyncClient

from tests.factories import Actor, IdentityApi, expect, problem

pytestmark = pytest.mark.anyio

TOO_LONG = "x" * 2001


@pytest.fixture
async def setup(api: IdentityApi) -> tuple[dict[str, Any], Actor, Actor]:
    community, admin = await api.community()
    member = await api.member(community["id"], admin)
    return community, admin, member


# --- users -------------------------------------------------------------------------------


BAD_SIGN_UPS: list[dict[str, Any]] = [
    {"email": "not-an-email", "password": "long enough pw"},
    {"email": "a@", "password": "long enough pw"},
    {"email": "@example.org", "password": "long enough pw"},
    {"email": "two@@example.org", "password": "long enough pw"},
    {"email": "x" * 250 + "@example.org", "password": "long enough pw"},
    {"email": "short@example.org", "password": "short"},
    {"email": "long@example.org", "password": "p" * 129},
    {"email": "extra@example.org", "password": "long enough pw", "is_platform_admin": True},
    {"email": 5, "password": "long enough pw"},
    {"email": "nopass@example.org"},
    {},
]


async def test_bad_sign_ups_are_refused(client: AsyncClient, api: IdentityApi) -> None:
    for body in BAD_SIGN_UPS:
        refusal = problem(await client.post("/v1/users", json=body), 422, "validation_error")
        assert refusal["errors"], body
        assert all(e["loc"][0] == "body" for e in refusal["errors"]), body
        email = body.get("email")
        if (
            isinstance(email, str)
            and len(email) < 64
            and re.fullmatch(r"[a-z]+@example\.org", email)
        ):
            # Nobody was created: the same email signs up properly afterwards, as a plain user.
            user = await api.user(email)
            me = expect(await client.get("/v1/me", headers=user.headers), 200)
            assert me["user"]["is_platform_admin"] is False, body


async def test_an_unknown_field_names_itself(client: AsyncClient) -> None:
    body = problem(
        await client.post(
            "/v1/users",
            json={
                "email": "a@example.org",
                "password": "long enough pw",
                "is_platform_admin": True,
            },
        ),
        422,
        "validation_error",
    )
    assert [e["loc"] for e in body["errors"]] == [["body", "is_platform_admin"]]
    assert body["errors"][0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"email": "a@example.org",}', b"not json", b'{"email": "a@example.org"'],
)
async def test_malformed_json_is_a_400(client: AsyncClient, raw: bytes) -> None:
    problem(
        await client.post("/v1/users", content=raw, headers={"Content-Type": "application/json"}),
        400,
        "malformed_json",
    )


@pytest.mark.parametrize("raw", [b"[]", b'"a string"', b"42", b"null"])
async def test_json_that_is_not_an_object_is_a_422(client: AsyncClient, raw: bytes) -> None:
    problem(
        await client.post("/v1/users", content=raw, headers={"Content-Type": "application/json"}),
        422,
        "validation_error",
    )


# --- communities -------------------------------------------------------------------------


BAD_COMMUNITIES: list[Any] = [
    {"slug": "Upper-Case"},
    {"slug": "ab"},
    {"slug": "-leading"},
    {"slug": "trailing-"},
    {"slug": "under_score"},
    {"slug": "sp ace"},
    {"slug": "é-accent"},
    {"slug": "x" * 64},
    {"name": ""},
    {"name": "n" * 201},
    {"description": TOO_LONG},
    {"timezone": "Mars/Olympus_Mons"},
    {"timezone": "utc"},
    {"default_min_balance": 10},
    {"default_min_balance": "-60"},
    {"default_min_balance": -60.5},
    {"default_max_balance": -1},
    {"default_max_balance": True},
    {"confirmation_policy": "anyone"},
    {"auto_confirm_after_days": 0},
    {"backdating_window_days": -1},
    {"creator_member": {"display_name": "A", "kind": "alien"}},
    {"creator_member": {"display_name": "A", "kind": "citizen", "role": "admin"}},
    {"unknown": 1},
]


async def test_bad_communities_are_refused(client: AsyncClient, api: IdentityApi) -> None:
    admin = await api.platform_admin()
    before = expect(await client.get("/v1/communities", headers=admin.headers), 200)
    for changes in BAD_COMMUNITIES:
        body = {"slug": "good-slug", "name": "Good", **changes}
        refusal = problem(
            await client.post("/v1/communities", json=body, headers=admin.headers),
            422,
            "validation_error",
        )
        assert refusal["errors"], changes
    assert expect(await client.get("/v1/communities", headers=admin.headers), 200) == before
    me = expect(await client.get("/v1/me", headers=admin.headers), 200)
    assert me["memberships"] == []


BAD_COMMUNITY_UPDATES: list[Any] = [
    {"name": None},
    {"description": None},
    {"timezone": None},
    {"default_min_balance": None},
    {"default_max_balance": None},
    {"confirmation_policy": None},
    {"backdating_window_days": None},
    {"name": ""},
    {"name": 42},
    {"description": TOO_LONG},
    {"timezone": "Nowhere/Special"},
    {"default_min_balance": 1},
    {"default_min_balance": -10_000 * 60 - 1},
    {"default_max_balance": 10_000 * 60 + 1},
    {"default_max_balance": "600"},
    {"slug": "renamed"},
    {"id": "0190a0a0-0000-7000-8000-000000000000"},
    {"fund_account_id": "0190a0a0-0000-7000-8000-000000000000"},
    {"name": "Fine", "bogus": True},
]


async def test_bad_community_updates_change_nothing(
    client: AsyncClient, setup: tuple[dict[str, Any], Actor, Actor], api: IdentityApi
) -> None:
    community, admin, _ = setup
    before = await api.get_community(community["id"], admin)
    for changes in BAD_COMMUNITY_UPDATES:
        response = await client.patch(
            f"/v1/communities/{community['id']}", json=changes, headers=admin.headers
        )
        assert response.status_code == 422, changes
        problem(response, 422, "validation_error")
        assert await api.get_community(community["id"], admin) == before, changes


async def test_a_malformed_community_update_changes_nothing(
    client: AsyncClient, setup: tuple[dict[str, Any], Actor, Actor], api: IdentityApi
) -> None:
    community, admin, _ = setup
    before = await api.get_community(community["id"], admin)
    problem(
        await client.patch(
            f"/v1/communities/{community['id']}",
            content=b'{"name": "Half',
            headers={**admin.headers, "Content-Type": "application/json"},
        ),
        400,
        "malformed_json",
    )
    assert await api.get_community(community["id"], admin) == before


async def test_an_empty_community_update_changes_nothing(
    client: AsyncClient, setup: tuple[dict[str, Any], Actor, Actor], api: IdentityApi
) -> None:
    community, admin, _ = setup
    before = await api.get_community(community["id"], admin)
    after = expect(
        await client.patch(f"/v1/communities/{community['id']}", json={}, headers=admin.headers),
        200,
    )
    assert after == before


# --- members -----------------------------------------------------------------------------


BAD_MEMBER_UPDATES: list[Any] = [
    {"display_name": None},
    {"kind": None},
    {"role": None},
    {"status": None},
    {"bio": None},
    {"skills": None},
    {"needs": None},
    {"display_name": ""},
    {"display_name": "   "},
    {"display_name": "d" * 121},
    {"bio": TOO_LONG},
    {"kind": "robot"},
    {"role": "owner"},
    {"status": "banished"},
    {"skills": "gardening"},
    {"skills": [""]},
    {"skills": ["s" * 41]},
    {"skills": [f"skill {i}" for i in range(31)]},
    {"needs": [1, 2]},
    {"user_email": "someone@example.org"},
    {"community_id": "0190a0a0-0000-7000-8000-000000000000"},
    {"display_name": "Fine", "typo": 1},
]


async def test_bad_member_updates_change_nothing(
    client: AsyncClient, setup: tuple[dict[str, Any], Actor, Actor], api: IdentityApi
) -> None:
    _, admin, member = setup
    before = await api.get_member(member.member_id, admin)
    for changes in BAD_MEMBER_UPDATES:
        for by in (admin, member):
            response = await client.patch(
                f"/v1/members/{member.member_id}", json=changes, headers=by.headers
            )
            assert response.status_code == 422, changes
            assert problem(response, 422, "validation_error")["errors"]
        assert await api.get_member(member.member_id, admin) == before, changes


BAD_NEW_MEMBERS: list[Any] = [
    {"kind": "citizen"},
    {"display_name": "No kind"},
    {"display_name": "A", "kind": "citizen", "user_email": "not-an-email"},
    {"display_name": "A", "kind": "citizen", "role": "superuser"},
    {"display_name": "A", "kind": "citizen", "status": "active"},
    {"display_name": "A", "kind": "citizen", "bio": TOO_LONG},
    {"display_name": ["A"], "kind": "citizen"},
    {"display_name": "A", "kind": "citizen", "skills": [None]},
]


async def test_bad_new_members_are_refused(
    client: AsyncClient, setup: tuple[dict[str, Any], Actor, Actor]
) -> None:
    community, admin, _ = setup
    url = f"/v1/communities/{community['id']}/members"
    before = expect(await client.get(url, headers=admin.headers), 200)
    for body in BAD_NEW_MEMBERS:
        response = await client.post(url, json=body, headers=admin.headers)
        assert response.status_code == 422, body
        problem(response, 422, "validation_error")
    assert expect(await client.get(url, headers=admin.headers), 200) == before


BAD_CLIENTS: list[Any] = [
    {"name": "GP", "scopes": []},
    {"name": "GP", "scopes": ["root"]},
    {"name": "GP", "scopes": "members:read"},
    {"name": "", "scopes": ["members:read"]},
    {"scopes": ["members:read"]},
    {"name": "GP", "scopes": ["members:read"], "community_id": "x"},
]


async def test_bad_partner_clients_are_refused(
    client: AsyncClient, setup: tuple[dict[str, Any], Actor, Actor]
) -> None:
    community, admin, _ = setup
    url = f"/v1/communities/{community['id']}/clients"
    for body in BAD_CLIENTS:
        response = await client.post(url, json=body, headers=admin.headers)
        assert response.status_code == 422, body
        problem(response, 422, "validation_error")
    assert expect(await client.get(url, headers=admin.headers), 200) == []


async def test_refused_rule_changes_leave_the_member_unchanged(
    client: AsyncClient, setup: tuple[dict[str, Any], Actor, Actor], api: IdentityApi
) -> None:
    """A refusal found half way through a change (bio fine, role not) keeps the bio too."""
    _, admin, member = setup
    before = await api.get_member(member.member_id, admin)
    problem(
        await client.patch(
            f"/v1/members/{member.member_id}",
            json={"bio": "changed", "role": "admin"},
            headers=member.headers,
        ),
        403,
        "field_not_editable",
    )
    problem(
        await client.patch(
            f"/v1/members/{admin.member_id}",
            json={"bio": "changed", "status": "left"},
            headers=admin.headers,
        ),
        409,
        "last_admin",
    )
    problem(
        await client.patch(
            f"/v1/members/{member.member_id}",
            json={"display_name": "Changed", "status": "pending"},
            headers=admin.headers,
        ),
        409,
        "invalid_status_change",
    )
    assert await api.get_member(member.member_id, admin) == before
    assert (await api.get_member(admin.member_id, admin))["bio"] == ""


# --- query parameters --------------------------------------------------------------------


BAD_CURSORS: list[Any] = [
    "!!!",
    "not-a-cursor",
    "W10",  # []
    "e30",  # {}
    "WyJub3QtYS11dWlkIl0",  # ["not-a-uuid"]
    "WzEyM10",  # [123]
    "WyIxIl0",  # ["1"]
    "bnVsbA",  # null
    "_w",  # a byte that is not UTF-8
]


async def test_a_bad_cursor_is_refused(
    client: AsyncClient, setup: tuple[dict[str, Any], Actor, Actor]
) -> None:
    community, admin, _ = setup
    for cursor in BAD_CURSORS:
        for url in (f"/v1/communities/{community['id']}/members", "/v1/communities"):
            response = await client.get(url, params={"cursor": cursor}, headers=admin.headers)
            assert response.status_code == 422, cursor
            problem(response, 422, "invalid_cursor")


BAD_QUERIES: list[Any] = [
    {"limit": "0"},
    {"limit": "-1"},
    {"limit": "ten"},
    {"status": "sleeping"},
    {"kind": "robot"},
    {"role": "owner"},
    {"cursor": "c" * 501},
]


async def test_bad_query_parameters_are_refused(
    client: AsyncClient, setup: tuple[dict[str, Any], Actor, Actor]
) -> None:
    community, admin, _ = setup
    for params in BAD_QUERIES:
        response = await client.get(
            f"/v1/communities/{community['id']}/members", params=params, headers=admin.headers
        )
        assert response.status_code == 422, params
        body = problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"][0] == "query", params

"""Membership flows and the rules on roles, statuses and the last admin."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from app.main import create_app
from tests.conftest import make_settings
from tests.factories import Actor, IdentityApi, expect, problem

pytestmark = pytest.mark.anyio


async def _patch(client: AsyncClient, member_id: str, by: Actor, body: dict[str, Any]) -> Any:
    return await client.patch(f"/v1/members/{member_id}", json=body, headers=by.headers)


async def _unchanged(api: IdentityApi, before: dict[str, Any], by: Actor) -> None:
    assert await api.get_member(before["id"], by) == before


# --- joining -----------------------------------------------------------------------------


async def test_a_join_request_is_approved_by_a_coordinator(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, admin = await api.community()
    coordinator = await api.member(community["id"], admin, role="coordinator")
    joiner = await api.join(community["id"], await api.user(), skills=["Dog walking"])
    request = joiner.member
    assert (request["status"], request["role"], request["joined_at"]) == ("pending", "member", None)
    assert request["has_login"] is True
    assert request["account_id"]  # the account exists from the start, with nothing in it

    # Pending members cannot yet see the community's members.
    problem(
        await client.get(f"/v1/communities/{community['id']}/members", headers=joiner.headers),
        403,
        "membership_inactive",
    )
    approved = expect(
        await _patch(client, joiner.member_id, coordinator, {"status": "active"}), 200
    )
    assert approved["status"] == "active"
    assert approved["joined_at"] is not None
    assert approved["skills"] == ["dog walking"]
    expect(
        await client.get(f"/v1/communities/{community['id']}/members", headers=joiner.headers), 200
    )


async def test_a_join_request_is_declined(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    coordinator = await api.member(community["id"], admin, role="coordinator")
    joiner = await api.join(community["id"], await api.user())
    declined = expect(await _patch(client, joiner.member_id, coordinator, {"status": "left"}), 200)
    assert (declined["status"], declined["joined_at"]) == ("left", None)
    # Asking again is refused: the membership exists (a coordinator can welcome them back).
    problem(
        await client.post(
            f"/v1/communities/{community['id']}/members",
            json={"display_name": "Again", "kind": "citizen"},
            headers=joiner.headers,
        ),
        409,
        "already_member",
    )
    back = expect(await _patch(client, joiner.member_id, coordinator, {"status": "active"}), 200)
    assert back["status"] == "active"
    assert back["joined_at"] is not None


async def test_a_join_request_cannot_choose_a_role_or_another_login(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, _ = await api.community()
    user = await api.user()
    somebody = await api.user()
    url = f"/v1/communities/{community['id']}/members"
    for extra in ({"role": "admin"}, {"role": "coordinator"}, {"user_email": somebody.email}):
        problem(
            await client.post(
                url, json={"display_name": "Me", "kind": "citizen", **extra}, headers=user.headers
            ),
            403,
            "role_change_not_allowed",
        )
    me = expect(await client.get("/v1/me", headers=user.headers), 200)
    assert me["memberships"] == []


async def test_a_coordinator_adds_members_with_and_without_a_login(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, admin = await api.community()
    coordinator = await api.member(community["id"], admin, role="coordinator")
    with_login = await api.member(community["id"], coordinator, kind="professional")
    assert with_login.member["status"] == "active"
    assert with_login.member["has_login"] is True
    assert with_login.member["joined_at"] is not None
    me = expect(await client.get("/v1/me", headers=with_login.headers), 200)
    assert [m["member_id"] for m in me["memberships"]] == [with_login.member_id]

    # People without a login: as many as needed, each with an account.
    ids = set()
    for _ in range(2):
        body = expect(
            await client.post(
                f"/v1/communities/{community['id']}/members",
                json={"display_name": "Mrs Patel", "kind": "citizen"},
                headers=coordinator.headers,
            ),
            201,
        )
        assert (body["status"], body["has_login"]) == ("active", False)
        assert body["account_id"]
        ids.add(body["id"])
    assert len(ids) == 2


async def test_adding_an_unknown_or_existing_login_is_refused(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, admin = await api.community()
    existing = await api.member(community["id"], admin)
    url = f"/v1/communities/{community['id']}/members"
    before = expect(await client.get(url, headers=admin.headers), 200)

    problem(
        await client.post(
            url,
            json={"display_name": "X", "kind": "citizen", "user_email": "nobody@example.org"},
            headers=admin.headers,
        ),
        422,
        "user_not_found",
    )
    problem(
        await client.post(
            url,
            json={"display_name": "X", "kind": "citizen", "user_email": existing.email.upper()},
            headers=admin.headers,
        ),
        409,
        "already_member",
    )
    # The admin themself is already a member too.
    problem(
        await client.post(
            url,
            json={"display_name": "X", "kind": "citizen", "user_email": admin.email},
            headers=admin.headers,
        ),
        409,
        "already_member",
    )
    assert expect(await client.get(url, headers=admin.headers), 200) == before


async def test_only_admins_add_coordinators_and_admins(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, admin = await api.community()
    coordinator = await api.member(community["id"], admin, role="coordinator")
    partner = await api.partner(community["id"], admin, ["members:write", "members:read"])
    url = f"/v1/communities/{community['id']}/members"
    for by in (coordinator.headers, partner.headers):
        for role in ("coordinator", "admin"):
            problem(
                await client.post(
                    url, json={"display_name": "X", "kind": "citizen", "role": role}, headers=by
                ),
                403,
                "role_change_not_allowed",
            )
    made = await api.member(community["id"], admin, role="coordinator")
    assert made.member["role"] == "coordinator"
    listed = expect(await client.get(f"{url}?role=coordinator", headers=admin.headers), 200)
    assert sorted(m["id"] for m in listed["items"]) == sorted(
        [coordinator.member_id, made.member_id]
    )


# --- roles -------------------------------------------------------------------------------


async def test_only_admins_change_roles(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    coordinator = await api.member(community["id"], admin, role="coordinator")
    member = await api.member(community["id"], admin)
    partner = await api.partner(community["id"], admin, ["members:write", "members:read"])
    before = await api.get_member(member.member_id, admin)

    for by in (coordinator, member):
        problem(
            await _patch(client, member.member_id, by, {"role": "coordinator"}),
            403,
            "role_change_not_allowed" if by is coordinator else "field_not_editable",
        )
    response = await client.patch(
        f"/v1/members/{member.member_id}", json={"role": "coordinator"}, headers=partner.headers
    )
    problem(response, 403, "role_change_not_allowed")
    # A coordinator cannot promote themself either.
    problem(
        await _patch(client, coordinator.member_id, coordinator, {"role": "admin"}),
        403,
        "role_change_not_allowed",
    )
    await _unchanged(api, before, admin)

    promoted = expect(await _patch(client, member.member_id, admin, {"role": "coordinator"}), 200)
    assert promoted["role"] == "coordinator"
    # Now they coordinate: they can add members.
    await api.member(community["id"], member)


async def test_the_last_active_admin_stays(client: AsyncClient, api: IdentityApi) -> None:
    community, founder = await api.community()
    before = await api.get_member(founder.member_id, founder)
    for change in (
        {"role": "coordinator"},
        {"role": "member"},
        {"status": "suspended"},
        {"status": "left"},
        {"role": "member", "status": "left"},
    ):
        problem(await _patch(client, founder.member_id, founder, change), 409, "last_admin")
    await _unchanged(api, before, founder)

    # With a second admin, the first may step down.
    second = await api.member(community["id"], founder, role="admin")
    stepped = expect(await _patch(client, founder.member_id, founder, {"role": "member"}), 200)
    assert stepped["role"] == "member"
    # ...and the second is now the last one.
    problem(await _patch(client, second.member_id, second, {"status": "left"}), 409, "last_admin")


async def test_a_suspended_admin_does_not_count(client: AsyncClient, api: IdentityApi) -> None:
    community, founder = await api.community()
    second = await api.member(community["id"], founder, role="admin")
    expect(await _patch(client, second.member_id, founder, {"status": "suspended"}), 200)
    problem(await _patch(client, founder.member_id, founder, {"role": "member"}), 409, "last_admin")


async def test_a_platform_admin_cannot_remove_the_last_admin_either(
    client: AsyncClient, api: IdentityApi
) -> None:
    padmin = await api.platform_admin()
    community = await api.bare_community(padmin)
    admin = await api.member(community["id"], padmin, role="admin")
    problem(
        await _patch(client, admin.member_id, padmin, {"status": "suspended"}), 409, "last_admin"
    )


async def test_coordinators_cannot_act_on_admins(client: AsyncClient, api: IdentityApi) -> None:
    """Suspending or editing someone who outranks you is a role change in disguise."""
    community, founder = await api.community()
    second_admin = await api.member(community["id"], founder, role="admin")
    coordinator = await api.member(community["id"], founder, role="coordinator")
    other_coordinator = await api.member(community["id"], founder, role="coordinator")
    partner = await api.partner(community["id"], founder, ["members:write", "members:read"])
    before = await api.get_member(second_admin.member_id, founder)
    before_coordinator = await api.get_member(other_coordinator.member_id, founder)

    for change in ({"status": "suspended"}, {"status": "left"}, {"display_name": "Demoted"}):
        problem(
            await _patch(client, second_admin.member_id, coordinator, change),
            403,
            "insufficient_role",
        )
        problem(
            await client.patch(
                f"/v1/members/{second_admin.member_id}", json=change, headers=partner.headers
            ),
            403,
            "insufficient_role",
        )
        problem(
            await _patch(client, other_coordinator.member_id, coordinator, change),
            403,
            "insufficient_role",
        )
    await _unchanged(api, before, founder)
    await _unchanged(api, before_coordinator, founder)
    # Admins still can.
    expect(await _patch(client, other_coordinator.member_id, founder, {"status": "suspended"}), 200)
    expect(await _patch(client, second_admin.member_id, founder, {"status": "suspended"}), 200)


# --- statuses ----------------------------------------------------------------------------


STATUS_MOVES = [
    ("pending", "active", True),
    ("pending", "left", True),
    ("pending", "suspended", False),
    ("active", "suspended", True),
    ("active", "left", True),
    ("active", "pending", False),
    ("suspended", "active", True),
    ("suspended", "left", True),
    ("suspended", "pending", False),
    ("left", "active", True),
    ("left", "suspended", False),
    ("left", "pending", False),
]


async def test_status_transitions_by_a_coordinator(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    coordinator = await api.member(community["id"], admin, role="coordinator")
    for start, end, allowed in STATUS_MOVES:
        if start == "pending":
            target = (await api.join(community["id"], await api.user())).member
        else:
            target = (await api.member(community["id"], coordinator, with_login=False)).member
            if start != "active":
                target = expect(
                    await _patch(client, target["id"], coordinator, {"status": start}), 200
                )
        assert target["status"] == start
        response = await _patch(client, target["id"], coordinator, {"status": end})
        if allowed:
            assert expect(response, 200)["status"] == end
        else:
            assert response.status_code == 409, (start, end)
            problem(response, 409, "invalid_status_change")
            await _unchanged(api, target, coordinator)


async def test_members_edit_their_own_profile_only(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    member = await api.member(community["id"], admin)
    edited = expect(
        await _patch(
            client,
            member.member_id,
            member,
            {
                "display_name": "  Joan R.  ",
                "bio": "Retired nurse.",
                "skills": ["Knitting", "knitting "],
                "needs": ["lifts to the GP"],
            },
        ),
        200,
    )
    assert edited["display_name"] == "Joan R."
    assert edited["bio"] == "Retired nurse."
    assert edited["skills"] == ["knitting"]
    assert edited["needs"] == ["lifts to the GP".lower()]

    locked = (403, "field_not_editable")
    for change, (status, code) in (
        ({"role": "admin"}, locked),
        ({"role": "member"}, locked),
        ({"kind": "professional"}, locked),
        ({"bio": "sneaky", "kind": "organization"}, locked),
        ({"status": "suspended"}, (409, "invalid_status_change")),
        ({"status": "pending"}, (409, "invalid_status_change")),
    ):
        response = await _patch(client, member.member_id, member, change)
        assert response.status_code == status, (change, response.text)
        problem(response, status, code)
        await _unchanged(api, edited, admin)

    # Another member's profile is not theirs to edit.
    other = await api.member(community["id"], admin)
    problem(
        await _patch(client, other.member_id, member, {"bio": "mine now"}), 403, "insufficient_role"
    )

    # Leaving is theirs to decide.
    left = expect(await _patch(client, member.member_id, member, {"status": "left"}), 200)
    assert left["status"] == "left"
    problem(
        await _patch(client, member.member_id, member, {"status": "active"}),
        409,
        "invalid_status_change",
    )


async def test_a_pending_member_may_withdraw_but_not_approve_themself(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, _ = await api.community()
    joiner = await api.join(community["id"], await api.user())
    problem(
        await _patch(client, joiner.member_id, joiner, {"status": "active"}),
        409,
        "invalid_status_change",
    )
    withdrawn = expect(await _patch(client, joiner.member_id, joiner, {"status": "left"}), 200)
    assert withdrawn["status"] == "left"


async def test_a_suspended_member_cannot_reinstate_themself(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, admin = await api.community()
    member = await api.member(community["id"], admin, role="coordinator")
    suspended = expect(await _patch(client, member.member_id, admin, {"status": "suspended"}), 200)
    problem(
        await _patch(client, member.member_id, member, {"status": "active"}),
        409,
        "invalid_status_change",
    )
    # No longer a coordinator in effect: cannot add members or approve others.
    problem(
        await client.post(
            f"/v1/communities/{community['id']}/members",
            json={"display_name": "X", "kind": "citizen"},
            headers=member.headers,
        ),
        409,
        "already_member",
    )
    await _unchanged(api, suspended, admin)


# --- communities -------------------------------------------------------------------------


async def test_an_admin_updates_the_community(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    updated = expect(
        await client.patch(
            f"/v1/communities/{community['id']}",
            json={
                "name": "Riverside",
                "timezone": "Europe/London",
                "default_min_balance": -600,
                "auto_confirm_after_days": 14,
                "confirmation_policy": "coordinator",
            },
            headers=admin.headers,
        ),
        200,
    )
    assert updated["name"] == "Riverside"
    assert updated["timezone"] == "Europe/London"
    assert updated["default_min_balance"] == -600
    assert updated["default_max_balance"] == community["default_max_balance"]
    assert updated["auto_confirm_after_days"] == 14
    assert updated["confirmation_policy"] == "coordinator"
    assert updated["slug"] == community["slug"]
    cleared = expect(
        await client.patch(
            f"/v1/communities/{community['id']}",
            json={"auto_confirm_after_days": None},
            headers=admin.headers,
        ),
        200,
    )
    assert cleared["auto_confirm_after_days"] is None
    assert await api.get_community(community["id"], admin) == cleared


async def test_community_defaults_and_fund(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    assert community["default_min_balance"] == -20 * 60
    assert community["default_max_balance"] == 100 * 60
    assert community["timezone"] == "UTC"
    assert community["fund_account_id"]
    assert admin.member["role"] == "admin"
    assert admin.member["status"] == "active"


async def test_a_slug_is_taken_once(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    problem(
        await client.post(
            "/v1/communities",
            json={"slug": community["slug"], "name": "Copycat"},
            headers=admin.headers,
        ),
        409,
        "slug_taken",
    )
    page = expect(await client.get("/v1/communities", headers=admin.headers), 200)
    assert [c["slug"] for c in page["items"]].count(community["slug"]) == 1
    me = expect(await client.get("/v1/me", headers=admin.headers), 200)
    assert len(me["memberships"]) == 1


# --- users -------------------------------------------------------------------------------


async def test_an_email_is_registered_once(client: AsyncClient, api: IdentityApi) -> None:
    user = await api.user()
    for email in (user.email, user.email.upper()):
        problem(
            await client.post("/v1/users", json={"email": email, "password": "another password"}),
            409,
            "email_taken",
        )
    # The original password still works: nothing was overwritten.
    await api.token(user.email)


async def test_sign_up_can_be_switched_off(database_url: str) -> None:
    from httpx import ASGITransport

    application: FastAPI = create_app(make_settings(database_url, allow_signup=False))
    async with application.router.lifespan_context(application):
        transport = ASGITransport(app=application, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            problem(
                await http.post(
                    "/v1/users", json={"email": "new@example.org", "password": "long enough pw"}
                ),
                403,
                "signup_disabled",
            )
            problem(
                await http.post(
                    "/v1/auth/token",
                    data={
                        "grant_type": "password",
                        "username": "new@example.org",
                        "password": "long enough pw",
                    },
                ),
                400,
                "invalid_grant",
            )
            # Admins still bring people in.
            api = IdentityApi(http, application)
            community, admin = await api.community()
            await api.member(community["id"], admin, with_login=False)

"""Cursor pagination of the member and community lists (small pages to keep it quick)."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import AsyncClient

from app.core.config import Settings
from tests.conftest import make_settings
from tests.factories import Actor, IdentityApi, expect

pytestmark = pytest.mark.anyio

DEFAULT_PAGE = 2
MAX_PAGE = 3


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, default_page_size=DEFAULT_PAGE, max_page_size=MAX_PAGE)


async def _walk(
    client: AsyncClient, url: str, by: Actor, params: dict[str, str] | None = None
) -> list[list[dict[str, Any]]]:
    pages = []
    cursor: str | None = None
    while True:
        query = dict(params or {})
        if cursor is not None:
            query["cursor"] = cursor
        page = expect(await client.get(url, params=query, headers=by.headers), 200)
        pages.append(page["items"])
        cursor = page.get("next_cursor")
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor never ends"


async def test_members_walk_every_page_once(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    added = [
        (await api.member(community["id"], admin, with_login=False, name=f"member {i}")).member_id
        for i in range(6)
    ]
    url = f"/v1/communities/{community['id']}/members"
    everyone = [admin.member_id, *added]

    pages = await _walk(client, url, admin)
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [m["id"] for page in pages for m in page] == everyone

    pages = await _walk(client, url, admin, {"limit": "1000"})
    assert [len(p) for p in pages] == [MAX_PAGE, MAX_PAGE, 1]  # the cap, not 1000
    assert [m["id"] for page in pages for m in page] == everyone

    pages = await _walk(client, url, admin, {"limit": "1"})
    assert [m["id"] for page in pages for m in page] == everyone


async def test_filters_apply_across_pages(client: AsyncClient, api: IdentityApi) -> None:
    community, admin = await api.community()
    professionals = []
    for i in range(7):
        kind = "professional" if i % 2 else "citizen"
        actor = await api.member(community["id"], admin, kind=kind, with_login=False)
        if kind == "professional":
            professionals.append(actor.member_id)
    joiner = await api.join(community["id"], await api.user())
    url = f"/v1/communities/{community['id']}/members"

    pages = await _walk(client, url, admin, {"kind": "professional", "status": "active"})
    # The founding admin is a professional too.
    assert [m["id"] for page in pages for m in page] == [admin.member_id, *professionals]
    pending = await _walk(client, url, admin, {"status": "pending"})
    assert [m["id"] for page in pending for m in page] == [joiner.member_id]
    admins = await _walk(client, url, admin, {"role": "admin"})
    assert [m["id"] for page in admins for m in page] == [admin.member_id]


async def test_a_page_is_not_disturbed_by_new_members(
    client: AsyncClient, api: IdentityApi
) -> None:
    community, admin = await api.community()
    first = [
        (await api.member(community["id"], admin, with_login=False)).member_id for _ in range(3)
    ]
    url = f"/v1/communities/{community['id']}/members"
    page = expect(await client.get(url, headers=admin.headers), 200)
    later = (await api.member(community["id"], admin, with_login=False)).member_id
    rest: list[str] = []
    cursor = page["next_cursor"]
    while cursor:
        next_page = expect(
            await client.get(url, params={"cursor": cursor}, headers=admin.headers), 200
        )
        rest += [m["id"] for m in next_page["items"]]
        cursor = next_page.get("next_cursor")
    assert [m["id"] for m in page["items"]] + rest == [admin.member_id, *first, later]


async def test_communities_walk_every_page_once(client: AsyncClient, api: IdentityApi) -> None:
    padmin = await api.platform_admin()
    created = [(await api.bare_community(padmin))["id"] for _ in range(5)]
    user = await api.user()
    pages = await _walk(client, "/v1/communities", user)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [c["id"] for page in pages for c in page] == created
    pages = await _walk(client, "/v1/communities", user, {"limit": "500"})
    assert [len(p) for p in pages] == [MAX_PAGE, 2]


async def test_an_empty_list_has_no_cursor(client: AsyncClient, api: IdentityApi) -> None:
    user = await api.user()
    page = expect(await client.get("/v1/communities", headers=user.headers), 200)
    assert page["items"] == []
    assert page.get("next_cursor") is None

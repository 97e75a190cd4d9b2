"""Listings, the assets register: who may list and edit, categories, and search."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.exchanges.helpers import Community, community, problem
from tests.factories import Actor, expect

pytestmark = pytest.mark.anyio


async def listing(tb: Community, by: Actor, **fields: Any) -> dict[str, Any]:
    payload = {"type": "offer", "title": "Help", "category": "gardening", **fields}
    body: dict[str, Any] = expect(
        await tb.client.post(f"/v1/communities/{tb.id}/listings", json=payload, headers=by.headers),
        201,
    )
    return body


async def search(tb: Community, by: Actor, **params: Any) -> list[str]:
    """Titles found, in the order served (newest first)."""
    body = expect(
        await tb.client.get(f"/v1/communities/{tb.id}/listings", params=params, headers=by.headers),
        200,
    )
    return [item["title"] for item in body["items"]]


async def test_creating_listings_and_categories(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    member = await tb.member()
    other = await tb.member(kind="organization")
    categories = f"/v1/communities/{tb.id}/categories"

    defaults = expect(await client.get(categories, headers=member.headers), 200)
    assert defaults["customised"] is False
    assert "gardening" in defaults["categories"]

    own = await listing(tb, member, title="Apple pruning", tags=["Fruit Trees", "fruit trees"])
    assert own["owner_member_id"] == member.member_id
    assert own["status"] == "open"
    assert own["tags"] == ["fruit trees"]
    # A coordinator lists on behalf of someone without a login; a member cannot.
    offline = await tb.member(with_login=False)
    behalf = await listing(tb, tb.coordinator, owner_member_id=offline.member_id, type="request")
    assert behalf["owner_member_id"] == offline.member_id
    before = await tb.books()
    for who, fields, status, code in (
        (member, {"owner_member_id": other.member_id}, 403, "listing_not_editable"),
        (member, {"category": "juggling"}, 422, "unknown_category"),
        (tb.coordinator, {"owner_member_id": "nobody"}, 422, "party_not_found"),
        (member, {"type": "swap"}, 422, "validation_error"),
        (member, {"title": ""}, 422, "validation_error"),
        (member, {"colour": "red"}, 422, "validation_error"),
    ):
        payload = {"type": "offer", "title": "Help", "category": "gardening", **fields}
        response = await client.post(
            f"/v1/communities/{tb.id}/listings", json=payload, headers=who.headers
        )
        problem(response, status, code)
    assert await tb.books() == before

    # Only a community admin sets the list; then it is the one that counts.
    wanted = {"categories": ["Dog walking", "gardening", "dog WALKING"]}
    for who in (member, tb.coordinator):
        problem(
            await client.put(categories, json=wanted, headers=who.headers), 403, "insufficient_role"
        )
    problem(
        await client.put(categories, json={"categories": []}, headers=tb.root.headers),
        422,
        "validation_error",
    )
    community_admin = await tb.api.member(tb.id, tb.root, role="admin")
    updated = expect(
        await client.put(categories, json=wanted, headers=community_admin.headers), 200
    )
    assert updated == {"categories": ["Dog walking", "gardening"], "customised": True}
    assert expect(await client.get(categories, headers=member.headers), 200) == updated
    walking = await listing(tb, member, title="Walks", category="dog walking")
    assert walking["category"] == "Dog walking"
    before = await tb.books()
    problem(
        await client.post(
            f"/v1/communities/{tb.id}/listings",
            json={"type": "offer", "title": "Lifts", "category": "transport"},
            headers=member.headers,
        ),
        422,
        "unknown_category",
    )
    assert await tb.books() == before
    # Another community still has the defaults.
    elsewhere = await community(client, app)
    assert (
        expect(
            await client.get(
                f"/v1/communities/{elsewhere.id}/categories", headers=elsewhere.root.headers
            ),
            200,
        )["customised"]
        is False
    )


async def test_editing_own_and_moderating(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    owner = await tb.member()
    neighbour = await tb.member()
    created = await listing(tb, owner, title="Bike repairs", category="household")
    url = f"/v1/listings/{created['id']}"

    edited = expect(
        await client.patch(
            url, json={"title": "Bike and pram repairs", "tags": ["Bikes"]}, headers=owner.headers
        ),
        200,
    )
    assert (edited["title"], edited["tags"]) == ("Bike and pram repairs", ["bikes"])
    before = await tb.books()
    for who, body, status, code in (
        (neighbour, {"status": "closed"}, 403, "listing_not_editable"),
        (neighbour, {"title": "Mine now"}, 403, "listing_not_editable"),
        (owner, {"category": "juggling"}, 422, "unknown_category"),
        (owner, {"status": "deleted"}, 422, "validation_error"),
        (owner, {"title": None}, 422, "validation_error"),
        (owner, {"owner_member_id": neighbour.member_id}, 422, "validation_error"),
    ):
        problem(await client.patch(url, json=body, headers=who.headers), status, code)
    assert await tb.books() == before

    # The owner pauses it; a coordinator, moderating, closes it.
    assert (
        expect(await client.patch(url, json={"status": "paused"}, headers=owner.headers), 200)[
            "status"
        ]
        == "paused"
    )
    closed = expect(
        await client.patch(
            url,
            json={"status": "closed", "title": "Removed: off-topic"},
            headers=tb.coordinator.headers,
        ),
        200,
    )
    assert (closed["status"], closed["title"]) == ("closed", "Removed: off-topic")
    # Everyone in the community can see it; nobody outside can.
    assert expect(await client.get(url, headers=neighbour.headers), 200)["id"] == created["id"]
    other = await community(client, app)
    stranger = await other.member()
    problem(await client.get(url, headers=stranger.headers), 404, "listing_not_found")
    problem(
        await client.patch(url, json={"status": "open"}, headers=stranger.headers),
        404,
        "listing_not_found",
    )
    problem(
        await client.get("/v1/listings/not-an-id", headers=owner.headers), 404, "listing_not_found"
    )


async def test_search(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    citizen = await tb.member(kind="citizen")
    gp = await tb.member(kind="professional")
    charity = await tb.member(kind="organization")
    await listing(
        tb,
        citizen,
        title="Apple tree pruning",
        description="Bring a ladder",
        tags=["fruit", "weekends"],
    )
    await listing(
        tb,
        gp,
        type="request",
        title="Help with the garden",
        category="gardening",
        tags=["weekends"],
    )
    await listing(
        tb,
        charity,
        title="IT drop-in",
        category="IT help",
        description="Laptops, phones and tablets",
        tags=["phones"],
    )
    await listing(tb, citizen, type="request", title="A lift to the clinic", category="transport")
    paused = await listing(tb, gp, title="Paused offer of tea", category="companionship")
    expect(
        await client.patch(
            f"/v1/listings/{paused['id']}", json={"status": "paused"}, headers=gp.headers
        ),
        200,
    )

    everything = [
        "A lift to the clinic",
        "IT drop-in",
        "Help with the garden",
        "Apple tree pruning",
    ]
    assert await search(tb, citizen) == everything  # open ones, newest first
    assert await search(tb, citizen, q="garden") == ["Help with the garden"]
    assert await search(tb, citizen, q="LADDER") == ["Apple tree pruning"]
    assert await search(tb, citizen, q="garden help") == ["Help with the garden"]
    assert await search(tb, citizen, q="   ") == everything
    assert await search(tb, citizen, type="request") == [
        "A lift to the clinic",
        "Help with the garden",
    ]
    assert await search(tb, citizen, category="it help") == ["IT drop-in"]
    assert await search(tb, citizen, tag="Weekends") == [
        "Help with the garden",
        "Apple tree pruning",
    ]
    assert await search(tb, citizen, tag="week") == []  # tags match whole, not in part
    assert await search(tb, citizen, owner_kind="professional") == ["Help with the garden"]
    assert await search(tb, citizen, owner_kind="organization", q="phones") == ["IT drop-in"]
    assert await search(tb, citizen, owner_member_id=citizen.member_id) == [
        "A lift to the clinic",
        "Apple tree pruning",
    ]
    assert await search(tb, citizen, owner_member_id="nobody") == []
    assert await search(tb, citizen, status="paused") == ["Paused offer of tea"]
    assert await search(
        tb,
        citizen,
        type="request",
        tag="weekends",
        owner_kind="professional",
        category="gardening",
        q="garden",
    ) == ["Help with the garden"]
    for bad in ({"type": "swap"}, {"owner_kind": "robot"}, {"status": "gone"}, {"limit": 0}):
        problem(
            await client.get(
                f"/v1/communities/{tb.id}/listings", params=bad, headers=citizen.headers
            ),
            422,
            "validation_error",
        )
    problem(
        await client.get(
            f"/v1/communities/{tb.id}/listings",
            params={"cursor": "garbage!"},
            headers=citizen.headers,
        ),
        422,
        "invalid_cursor",
    )
    # Another community's search sees none of these.
    other = await community(client, app)
    assert await search(other, other.root) == []
    outsider = await other.member()
    problem(
        await client.get(f"/v1/communities/{tb.id}/listings", headers=outsider.headers),
        403,
        "not_a_member",
    )


async def test_wildcards_and_injection_are_plain_text(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    member = await tb.member()
    await listing(tb, member, title="100% wool socks")
    await listing(tb, member, title="snake_case tutoring", tags=["a_b"])
    await listing(tb, member, title="Plain title", tags=["axb"])
    await listing(tb, member, title="Robert'); DROP TABLE listings;--")
    before = await tb.books()

    assert await search(tb, member, q="%") == ["100% wool socks"]
    assert await search(tb, member, q="_") == ["snake_case tutoring"]
    assert await search(tb, member, q="0% w") == ["100% wool socks"]
    assert await search(tb, member, q="e_c") == ["snake_case tutoring"]
    assert await search(tb, member, q="\\") == []
    assert await search(tb, member, tag="a_b") == ["snake_case tutoring"]
    assert await search(tb, member, tag="%") == []
    for hostile in ("' OR '1'='1", "'; DROP TABLE listings;--", '" OR 1=1 --', "%' --"):
        assert await search(tb, member, q=hostile) == [], hostile
        assert await search(tb, member, tag=hostile) == []
        assert await search(tb, member, category=hostile) == []
    assert await search(tb, member, q="DROP TABLE") == ["Robert'); DROP TABLE listings;--"]
    assert await tb.books() == before
    assert len(await search(tb, member)) == 4


async def test_pagination_walks_every_listing_once(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    member = await tb.member()
    titles = [f"Offer {n:02d}" for n in range(12)]
    for title in titles:
        await listing(tb, member, title=title)

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5, "q": "offer"}
        if cursor is not None:
            params["cursor"] = cursor
        body = expect(
            await client.get(
                f"/v1/communities/{tb.id}/listings", params=params, headers=member.headers
            ),
            200,
        )
        pages += 1
        seen.extend(item["title"] for item in body["items"])
        cursor = body.get("next_cursor")
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(titles))

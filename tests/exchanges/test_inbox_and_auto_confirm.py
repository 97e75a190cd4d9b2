"""The inbox across communities, thank-you notes, and proposals confirmed by the timer."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import update

from app.core.clock import utcnow
from app.core.ids import parse_id
from app.exchanges.service import auto_confirm_due
from app.models import Exchange
from tests.exchanges.helpers import Community, community, problem
from tests.factories import Actor, expect

pytestmark = pytest.mark.anyio


async def inbox(client: AsyncClient, who: Actor) -> list[tuple[str, str]]:
    body = expect(await client.get("/v1/me/pending", headers=who.headers), 200)
    return [(item["action"], item["exchange"]["id"]) for item in body["items"]]


async def join_as(tb: Community, user: Actor) -> Actor:
    """``user``'s login added to ``tb`` as an active member by its coordinator."""
    member = expect(
        await tb.client.post(
            f"/v1/communities/{tb.id}/members",
            json={"display_name": "Uma", "kind": "citizen", "user_email": user.email},
            headers=tb.root.headers,
        ),
        201,
    )
    actor = Actor(email=user.email, headers=user.headers, user_id=user.user_id, member=member)
    tb.members.append(actor)
    return actor


async def test_inbox_across_two_communities(client: AsyncClient, app: FastAPI) -> None:
    strict = await community(client, app, confirmation_policy="coordinator")
    easy = await community(client, app)
    uma = await strict.member()
    uma_easy = await join_as(easy, uma)
    a = await strict.member()
    b = await easy.member()

    in_strict = await strict.propose(a, [(a, 30)], [(uma, 30)])
    in_easy = await easy.propose(b, [(b, 20)], [(uma_easy, 20)])
    # One login, two memberships: both wait on Uma, newest first.
    assert await inbox(client, uma) == [("confirm", in_easy["id"]), ("confirm", in_strict["id"])]
    # Proposers wait on nobody's action of their own.
    assert await inbox(client, a) == []
    assert await inbox(client, b) == []
    # The strict community's coordinator must confirm too; the easy one's need not.
    assert await inbox(client, strict.coordinator) == [("coordinator_confirm", in_strict["id"])]
    assert await inbox(client, easy.coordinator) == []

    await strict.do(in_strict["id"], "confirm", uma)
    assert await inbox(client, uma) == [("confirm", in_easy["id"])]
    assert await inbox(client, strict.coordinator) == [("coordinator_confirm", in_strict["id"])]
    await strict.do(in_strict["id"], "confirm", strict.coordinator)
    assert await inbox(client, strict.coordinator) == []

    # A dispute: the other party answers it, the coordinator resolves it.
    await easy.do(in_easy["id"], "confirm", uma_easy)
    assert await inbox(client, uma) == []
    await easy.do(in_easy["id"], "dispute", b, note="It was longer")
    assert await inbox(client, uma) == [("answer_dispute", in_easy["id"])]
    assert await inbox(client, easy.coordinator) == [("resolve_dispute", in_easy["id"])]
    assert await inbox(client, strict.coordinator) == []
    await easy.do(in_easy["id"], "resolve", easy.coordinator, outcome="upheld", note="As posted")
    assert await inbox(client, uma) == []
    assert await inbox(client, easy.coordinator) == []

    # Rejected and cancelled proposals leave every inbox.
    gone = await easy.propose(b, [(b, 10)], [(uma_easy, 10)])
    assert await inbox(client, uma) == [("confirm", gone["id"])]
    await easy.do(gone["id"], "cancel", b)
    assert await inbox(client, uma) == []

    # The inbox belongs to a person: no token, no inbox; a partner service has none.
    problem(await client.get("/v1/me/pending"), 401, "invalid_token")
    partner = await easy.partner("exchanges:read")
    problem(await client.get("/v1/me/pending", headers=partner), 403, "user_required")


async def test_thanks_stand_only_with_the_help_they_thank_for(
    client: AsyncClient, app: FastAPI
) -> None:
    tb = await community(client, app)
    helper = await tb.member()
    r1 = await tb.member()
    r2 = await tb.member()
    notes = f"/v1/members/{helper.member_id}/thanks"

    # A note left on a group proposal that another receiver then rejects thanks nobody.
    group = await tb.propose(helper, [(helper, 40)], [(r1, 20), (r2, 20)])
    await tb.do(group["id"], "confirm", r1, thanks="Brilliant")
    await tb.do(group["id"], "reject", r2, note="I was not there")
    assert expect(await client.get(notes, headers=r1.headers), 200)["items"] == []

    kept = await tb.propose(helper, [(helper, 30)], [(r1, 30)])
    done = await tb.do(kept["id"], "confirm", r1, thanks="Thank you!")
    assert [p["thanks"] for p in done["parties"] if p["role"] == "receiver"] == ["Thank you!"]
    undone = await tb.propose(helper, [(helper, 30)], [(r2, 30)])
    await tb.do(undone["id"], "confirm", r2, thanks="Cheers")
    listed = expect(await client.get(notes, headers=r2.headers), 200)
    assert [t["thanks"] for t in listed["items"]] == ["Cheers", "Thank you!"]
    # Reversed after a dispute: the thanks go with it.
    await tb.do(undone["id"], "dispute", helper, note="Logged twice")
    await tb.do(undone["id"], "resolve", tb.coordinator, outcome="reversed", note="Duplicate")
    listed = expect(await client.get(notes, headers=r2.headers), 200)
    assert [(t["thanks"], t["from_member_id"]) for t in listed["items"]] == [
        ("Thank you!", r1.member_id)
    ]
    # Nobody outside the community reads them.
    other = await community(client, app)
    stranger = await other.member()
    problem(await client.get(notes, headers=stranger.headers), 404, "member_not_found")


async def age(app: FastAPI, exchange: dict[str, Any], days: int) -> None:
    """Make ``exchange`` look ``days`` old (the timer runs on created_at)."""
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(Exchange)
            .where(Exchange.id == parse_id(exchange["id"]))
            .values(created_at=utcnow() - timedelta(days=days))
        )


async def run_timer(app: FastAPI) -> tuple[int, int]:
    async with app.state.sessionmaker() as session, session.begin():
        return await auto_confirm_due(session, now=utcnow())


async def test_auto_confirm(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app, default_min_balance=-60)
    await tb.patch(auto_confirm_after_days=3)
    a, b, c = await tb.member(), await tb.member(), await tb.member()
    strict = await community(client, app, confirmation_policy="coordinator")
    await strict.patch(auto_confirm_after_days=3)
    s1, s2 = await strict.member(), await strict.member()
    manual = await community(client, app)
    m1, m2 = await manual.member(), await manual.member()

    old = await tb.propose(a, [(a, 30)], [(b, 30)])
    young = await tb.propose(a, [(a, 15)], [(b, 15)])
    too_big = await tb.propose(a, [(a, 90)], [(c, 90)])  # c would fall below -60
    rejected = await tb.propose(b, [(b, 10)], [(c, 10)])
    await tb.do(rejected["id"], "reject", c)
    needs_coordinator = await strict.propose(s1, [(s1, 30)], [(s2, 30)])
    no_timer = await manual.propose(m1, [(m1, 30)], [(m2, 30)])
    for exchange in (old, too_big, rejected, needs_coordinator, no_timer):
        await age(app, exchange, days=4)
    await age(app, young, days=2)

    assert await run_timer(app) == (1, 1)

    posted = await tb.exchange(old["id"])
    assert posted["status"] == "confirmed"
    assert posted["transaction_id"] is not None
    assert [e["action"] for e in posted["events"]] == ["propose", "auto_confirm", "posted"]
    assert all(p["confirmed_at"] is not None for p in posted["parties"])
    assert await tb.balances(a, b, c) == [30, -30, 0]
    for exchange, status in ((young, "proposed"), (too_big, "proposed"), (rejected, "rejected")):
        after = await tb.exchange(exchange["id"])
        assert after["status"] == status
        assert after["transaction_id"] is None
    skipped = await tb.exchange(too_big["id"])
    assert [p["confirmed_at"] for p in skipped["parties"] if p["member_id"] == c.member_id] == [
        None
    ]
    # The coordinator policy is not bypassed by the timer; a community without one is untouched.
    assert (await strict.exchange(needs_coordinator["id"]))["status"] == "proposed"
    assert (await manual.exchange(no_timer["id"]))["status"] == "proposed"
    assert await strict.balances(s1, s2) == [0, 0]
    assert await manual.balances(m1, m2) == [0, 0]

    # Running again posts nothing twice; the refused one is still refused.
    before = await tb.books()
    assert await run_timer(app) == (0, 1)
    assert await tb.books() == before

"""The exchange rules and bad input: each refusal is a precise problem with a stable ``code``,
and the books (every balance, the fund, every exchange with its events) stay as they were."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.exchanges.helpers import (
    Community,
    community,
    days_ago,
    exchange_body,
    problem,
    today,
)
from tests.factories import Actor, expect

pytestmark = pytest.mark.anyio


async def refused_proposal(
    tb: Community, by: Actor, body: dict[str, Any], status: int, code: str
) -> dict[str, Any]:
    before = await tb.books()
    response = await tb.client.post(
        f"/v1/communities/{tb.id}/exchanges", json=body, headers=by.headers
    )
    document = problem(response, status, code)
    assert await tb.books() == before, f"a refused proposal ({code}) changed the books"
    return document


async def refused_transition(
    tb: Community,
    exchange_id: str,
    action: str,
    by: Actor | dict[str, str],
    status: int,
    code: str,
    **body: Any,
) -> None:
    before = await tb.books()
    problem(await tb.act(exchange_id, action, by, **body), status, code)
    assert await tb.books() == before, f"a refused {action} ({code}) changed the books"


async def test_party_rules(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    a = await tb.member()
    b = await tb.member()
    suspended = await tb.member()
    await tb.set_status(suspended, "suspended")
    pending = await tb.applicant()
    left = await tb.member()
    await tb.set_status(left, "left")
    other = await community(client, app)
    stranger = await other.member()

    # Nobody exchanges with themselves, in either or both roles.
    await refused_proposal(tb, a, exchange_body([(a, 30)], [(a, 30)]), 422, "duplicate_party")
    await refused_proposal(
        tb, a, exchange_body([(a, 30)], [(b, 15), (a, 15)]), 422, "duplicate_party"
    )
    await refused_proposal(
        tb, a, exchange_body([(a, 15), (a, 15)], [(b, 30)]), 422, "duplicate_party"
    )
    # A member of another community is not found here, nor is a made-up id.
    await refused_proposal(
        tb, a, exchange_body([(a, 30)], [(stranger, 30)]), 422, "party_not_found"
    )
    body = exchange_body([(a, 30)], [(b, 30)])
    body["receivers"][0]["member_id"] = "not-a-member"
    await refused_proposal(tb, a, body, 422, "party_not_found")
    # Suspended, pending and departed members take no part.
    for inactive in (suspended, pending, left):
        await refused_proposal(
            tb, a, exchange_body([(a, 30)], [(inactive, 30)]), 409, "party_not_active"
        )
        await refused_proposal(
            tb,
            tb.coordinator,
            exchange_body([(inactive, 30)], [(a, 30)], mode="record"),
            409,
            "party_not_active",
        )
    # A member only proposes exchanges they are part of.
    c = await tb.member()
    await refused_proposal(tb, c, exchange_body([(a, 30)], [(b, 30)]), 403, "proposer_not_party")


async def test_a_suspended_member_can_no_longer_confirm(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    a = await tb.member()
    b = await tb.member()
    proposal = await tb.propose(a, [(a, 30)], [(b, 30)])
    await tb.set_status(b, "suspended")
    await refused_transition(tb, proposal["id"], "confirm", b, 403, "membership_inactive")


BAD_MINUTES: list[tuple[Any, str]] = [
    (0, "zero"),
    (-30, "negative"),
    (24 * 60 + 1, "over a day"),
    (30.5, "fractional"),
    ("30", "a string"),
    (None, "missing"),
    (True, "a boolean"),
]


async def test_minutes_must_be_whole_positive_and_at_most_a_day(
    client: AsyncClient, app: FastAPI
) -> None:
    tb = await community(client, app)
    a = await tb.member()
    b = await tb.member()
    for minutes, why in BAD_MINUTES:
        for side in ("providers", "receivers"):
            body = exchange_body([(a, 30)], [(b, 30)])
            body[side][0]["minutes"] = minutes
            document = await refused_proposal(tb, a, body, 422, "validation_error")
            assert document["errors"], (why, side)


async def test_a_full_day_per_party_is_the_most_but_allowed(
    client: AsyncClient, app: FastAPI
) -> None:
    tb = await community(client, app, default_min_balance=-48 * 60)
    a = await tb.member()
    b = await tb.member()
    c = await tb.member()
    created = await tb.propose(a, [(a, 1440)], [(b, 1440)])
    assert created["total_minutes"] == 1440
    # A group may total more than a day as long as no one party passes 24 h.
    group = await tb.propose(c, [(a, 1440), (c, 1440)], [(b, 1440), (tb.coordinator, 1440)])
    assert group["total_minutes"] == 2880
    # A receiver taking more than a day is refused even when providers' minutes add up.
    body = exchange_body([(a, 720), (c, 721)], [(b, 1441)])
    await refused_proposal(tb, a, body, 422, "validation_error")


async def test_occurred_on_window(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    a = await tb.member()
    b = await tb.member()
    tomorrow = days_ago(-1)
    for when in (tomorrow, days_ago(91), days_ago(3650)):
        document = await refused_proposal(
            tb,
            a,
            exchange_body([(a, 30)], [(b, 30)], occurred_on=when),
            422,
            "occurred_on_out_of_range",
        )
        assert "90 days" in document["detail"]
    # The edges are inside: today and exactly 90 days back.
    for when in (today().isoformat(), days_ago(90)):
        created = await tb.propose(a, [(a, 30)], [(b, 30)], occurred_on=when)
        assert created["occurred_on"] == when
    # A coordinator's record obeys the same window.
    await refused_proposal(
        tb,
        tb.coordinator,
        exchange_body([(a, 30)], [(b, 30)], occurred_on=tomorrow, mode="record"),
        422,
        "occurred_on_out_of_range",
    )
    # Not a date at all.
    await refused_proposal(
        tb,
        a,
        exchange_body([(a, 30)], [(b, 30)], occurred_on="last tuesday"),
        422,
        "validation_error",
    )

    # The community narrows its window to a week.
    await tb.patch(backdating_window_days=7)
    await refused_proposal(
        tb,
        a,
        exchange_body([(a, 30)], [(b, 30)], occurred_on=days_ago(8)),
        422,
        "occurred_on_out_of_range",
    )
    created = await tb.propose(a, [(a, 30)], [(b, 30)], occurred_on=days_ago(7))
    assert created["status"] == "proposed"
    # Zero days: only today.
    await tb.patch(backdating_window_days=0)
    await refused_proposal(
        tb,
        a,
        exchange_body([(a, 30)], [(b, 30)], occurred_on=days_ago(1)),
        422,
        "occurred_on_out_of_range",
    )


async def test_other_bad_proposals(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    a = await tb.member()
    b = await tb.member()
    c = await tb.member()
    other = await community(client, app)
    elsewhere = await other.member()
    foreign_listing = expect(
        await client.post(
            f"/v1/communities/{other.id}/listings",
            json={"type": "offer", "title": "Lifts", "category": "transport"},
            headers=elsewhere.headers,
        ),
        201,
    )

    await refused_proposal(tb, a, exchange_body([(a, 30)], [(b, 20)]), 422, "unbalanced")
    await refused_proposal(tb, a, exchange_body([(a, 30)], [(b, 20), (c, 20)]), 422, "unbalanced")
    # Equal split with more receivers than minutes: nobody would get a whole minute.
    await refused_proposal(
        tb, a, exchange_body([(a, 1)], [(b, None), (c, None)], split="equal"), 422, "unbalanced"
    )
    # With split=equal receivers' minutes are computed; with explicit they are required.
    await refused_proposal(
        tb, a, exchange_body([(a, 30)], [(b, 30)], split="equal"), 422, "validation_error"
    )
    await refused_proposal(tb, a, exchange_body([(a, 30)], [(b, None)]), 422, "validation_error")
    await refused_proposal(
        tb, a, exchange_body([(a, 30)], [(b, 30)], category="juggling"), 422, "unknown_category"
    )
    await refused_proposal(
        tb,
        a,
        exchange_body([(a, 30)], [(b, 30)], listing_id=foreign_listing["id"]),
        404,
        "listing_not_found",
    )
    await refused_proposal(
        tb, a, exchange_body([(a, 30)], [(b, 30)], listing_id="nope"), 404, "listing_not_found"
    )
    await refused_proposal(
        tb, a, exchange_body([(a, 30)], [(b, 30)], mode="instant"), 422, "validation_error"
    )
    await refused_proposal(
        tb, a, exchange_body([(a, 30)], [(b, 30)], minutes=30), 422, "validation_error"
    )
    await refused_proposal(
        tb, a, exchange_body([(a, 30)], [(b, 30)], description=""), 422, "validation_error"
    )
    await refused_proposal(tb, a, exchange_body([], [(b, 30)]), 422, "validation_error")
    await refused_proposal(tb, a, exchange_body([(a, 30)], []), 422, "validation_error")

    # Categories match whatever the case; the community's spelling is kept.
    created = await tb.propose(a, [(a, 30)], [(b, 30)], category="GARDENING")
    assert created["category"] == "gardening"


async def test_a_party_cannot_confirm_twice(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    giver = await tb.member()
    r1 = await tb.member()
    r2 = await tb.member()
    group = await tb.propose(giver, [(giver, 60)], [(r1, 30), (r2, 30)])
    await tb.do(group["id"], "confirm", r1)
    await refused_transition(tb, group["id"], "confirm", r1, 409, "already_confirmed")
    # Once posted, a second click says so too (and posts nothing).
    await tb.do(group["id"], "confirm", r2)
    await refused_transition(tb, group["id"], "confirm", r2, 409, "already_confirmed")
    await refused_transition(tb, group["id"], "confirm", tb.coordinator, 409, "already_confirmed")
    assert await tb.balances(giver, r1, r2) == [60, -30, -30]
    # The proposer never confirms their own proposal.
    one = await tb.propose(giver, [(giver, 10)], [(r1, 10)])
    await refused_transition(tb, one["id"], "confirm", giver, 409, "cannot_confirm_own_proposal")


async def test_transitions_from_the_wrong_state(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    a = await tb.member()
    b = await tb.member()
    coordinator = tb.coordinator

    rejected = await tb.propose(a, [(a, 30)], [(b, 30)])
    await tb.do(rejected["id"], "reject", b, note="no")
    for action, body in (
        ("confirm", {}),
        ("reject", {}),
        ("cancel", {}),
        ("dispute", {"note": "x"}),
        ("resolve", {"outcome": "upheld", "note": "x"}),
    ):
        await refused_transition(
            tb, rejected["id"], action, coordinator, 409, "invalid_transition", **body
        )

    proposed = await tb.propose(a, [(a, 30)], [(b, 30)])
    await refused_transition(tb, proposed["id"], "dispute", b, 409, "invalid_transition", note="x")
    await refused_transition(
        tb,
        proposed["id"],
        "resolve",
        coordinator,
        409,
        "invalid_transition",
        outcome="reversed",
        note="x",
    )

    posted = await tb.propose(a, [(a, 30)], [(b, 30)])
    await tb.do(posted["id"], "confirm", b)
    for action in ("reject", "cancel"):
        await refused_transition(tb, posted["id"], action, coordinator, 409, "invalid_transition")
    await refused_transition(
        tb,
        posted["id"],
        "resolve",
        coordinator,
        409,
        "invalid_transition",
        outcome="upheld",
        note="x",
    )
    # Bad bodies are validation problems, and change nothing either.
    await refused_transition(tb, posted["id"], "dispute", b, 422, "validation_error", note="")
    await tb.do(posted["id"], "dispute", b, note="Shorter than that")
    await refused_transition(
        tb,
        posted["id"],
        "resolve",
        coordinator,
        422,
        "validation_error",
        outcome="split the difference",
        note="x",
    )
    await refused_transition(tb, posted["id"], "confirm", coordinator, 409, "already_confirmed")


async def test_thanks_come_only_from_receivers(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    giver = await tb.member()
    taker = await tb.member()
    # The provider is the counterparty here (the receiver proposed).
    proposal = await tb.propose(taker, [(giver, 30)], [(taker, 30)])
    await refused_transition(
        tb, proposal["id"], "confirm", giver, 422, "thanks_from_receivers_only", thanks="Me!"
    )
    # A coordinator confirming for someone cannot put words in their mouth.
    await refused_transition(
        tb,
        proposal["id"],
        "confirm",
        tb.coordinator,
        422,
        "thanks_from_receivers_only",
        thanks="Great",
        on_behalf_of=giver.member_id,
    )
    await tb.do(proposal["id"], "confirm", giver)

    other = await tb.propose(giver, [(giver, 30)], [(taker, 30)])
    done = await tb.do(other["id"], "confirm", taker, thanks="Thank you so much")
    mine = next(p for p in done["parties"] if p["member_id"] == taker.member_id)
    assert mine["thanks"] == "Thank you so much"
    listed = expect(
        await client.get(f"/v1/members/{giver.member_id}/thanks", headers=taker.headers), 200
    )
    assert [(t["thanks"], t["from_member_id"]) for t in listed["items"]] == [
        ("Thank you so much", taker.member_id)
    ]
    # The receiver, who gave nothing, has no thanks of their own.
    theirs = expect(
        await client.get(f"/v1/members/{taker.member_id}/thanks", headers=taker.headers), 200
    )
    assert theirs["items"] == []

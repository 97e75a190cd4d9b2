"""Group exchanges, the coordinator confirmation policy, disputes, the community fund and
idempotent hour-moving requests, each checked to the minute."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.exchanges.helpers import community, exchange_body, problem
from tests.factories import expect

pytestmark = pytest.mark.anyio


async def test_coordinator_confirmation_policy(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app, confirmation_policy="coordinator")
    a = await tb.member()
    b = await tb.member()

    proposal = await tb.propose(a, [(a, 45)], [(b, 45)])
    assert proposal["needs_coordinator"] is True
    # The counterparty's confirmation is recorded, but a coordinator must still confirm.
    after_b = await tb.do(proposal["id"], "confirm", b)
    assert after_b["status"] == "proposed"
    assert after_b["transaction_id"] is None
    assert await tb.balances(a, b) == [0, 0]
    inbox = expect(await client.get("/v1/me/pending", headers=tb.coordinator.headers), 200)
    assert [(i["action"], i["exchange"]["id"]) for i in inbox["items"]] == [
        ("coordinator_confirm", proposal["id"])
    ]
    posted = await tb.do(proposal["id"], "confirm", tb.coordinator)
    assert posted["status"] == "confirmed"
    assert posted["needs_coordinator"] is False
    assert await tb.balances(a, b) == [45, -45]

    # A coordinator confirming first confirms for everyone and posts at once.
    second = await tb.propose(b, [(a, 15)], [(b, 15)])
    posted = await tb.do(second["id"], "confirm", tb.coordinator)
    assert posted["status"] == "confirmed"
    assert await tb.balances(a, b) == [60, -60]

    # Confirming one party's share on their behalf is not the coordinator's approval.
    third = await tb.propose(a, [(a, 10)], [(b, 10)])
    partial = await tb.do(third["id"], "confirm", tb.coordinator, on_behalf_of=b.member_id)
    assert partial["status"] == "proposed"
    problem(await tb.act(third["id"], "confirm", b), 409, "already_confirmed")
    assert (await tb.do(third["id"], "confirm", tb.coordinator))["status"] == "confirmed"

    # A coordinator's record needs nobody else.
    recorded = await tb.propose(tb.coordinator, [(b, 20)], [(a, 20)], mode="record")
    assert recorded["status"] == "confirmed"
    assert recorded["recorded_by_coordinator"] is True
    assert await tb.balances(a, b) == [50, -50]


async def test_group_exchange_with_explicit_minutes(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    p1, p2 = await tb.member(), await tb.member()
    r1, r2, r3 = await tb.member(), await tb.member(), await tb.member()

    group = await tb.propose(p1, [(p1, 60), (p2, 30)], [(r1, 50), (r2, 25), (r3, 15)])
    assert group["total_minutes"] == 90
    must = {p["member_id"] for p in group["parties"] if p["must_confirm"]}
    assert must == {p2.member_id, r1.member_id, r2.member_id, r3.member_id}

    # Each confirms their own share; nothing posts until the last one.
    for who in (r1, p2, r2):
        assert (await tb.do(group["id"], "confirm", who))["status"] == "proposed"
        assert await tb.balances(p1, p2, r1, r2, r3) == [0, 0, 0, 0, 0]
    done = await tb.do(group["id"], "confirm", r3, thanks="Great afternoon")
    assert done["status"] == "confirmed"
    assert await tb.balances(p1, p2, r1, r2, r3) == [60, 30, -50, -25, -15]
    transaction = expect(
        await client.get(f"/v1/transactions/{done['transaction_id']}", headers=tb.root.headers),
        200,
    )
    assert sorted(e["minutes"] for e in transaction["entries"]) == [-50, -25, -15, 30, 60]

    # A coordinator confirms for the whole group in one step ...
    second = await tb.propose(r1, [(p1, 20), (p2, 20)], [(r1, 20), (r2, 20)])
    posted = await tb.do(second["id"], "confirm", tb.coordinator)
    assert posted["status"] == "confirmed"
    assert await tb.balances(p1, p2, r1, r2) == [80, 50, -70, -45]
    # ... or for one absent party (on_behalf_of), the rest confirming themselves.
    third = await tb.propose(p1, [(p1, 30)], [(r1, 10), (r2, 10), (r3, 10)])
    await tb.do(third["id"], "confirm", r1)
    on_behalf = await tb.do(third["id"], "confirm", tb.coordinator, on_behalf_of=r2.member_id)
    assert on_behalf["status"] == "proposed"
    confirmed_r2 = next(p for p in on_behalf["parties"] if p["member_id"] == r2.member_id)
    assert confirmed_r2["confirmed_at"] is not None
    # Naming someone outside the exchange, or someone who already confirmed, changes nothing.
    outsider = await tb.member()
    problem(
        await tb.act(third["id"], "confirm", tb.coordinator, on_behalf_of=outsider.member_id),
        422,
        "party_not_found",
    )
    problem(
        await tb.act(third["id"], "confirm", tb.coordinator, on_behalf_of=r1.member_id),
        409,
        "already_confirmed",
    )
    assert (await tb.do(third["id"], "confirm", r3))["status"] == "confirmed"
    assert await tb.balances(p1, r1, r2, r3) == [110, -80, -55, -25]
    actions = [e["action"] for e in (await tb.exchange(third["id"]))["events"]]
    assert actions == ["propose", "confirm", "confirm", "confirm", "posted"]

    # Unbalanced groups are refused.
    problem(
        await client.post(
            f"/v1/communities/{tb.id}/exchanges",
            json=exchange_body([(p1, 60), (p2, 30)], [(r1, 50), (r2, 30)]),
            headers=p1.headers,
        ),
        422,
        "unbalanced",
    )


async def test_equal_split_remainder_is_charged_to_the_fund(
    client: AsyncClient, app: FastAPI
) -> None:
    tb = await community(client, app)
    teacher = await tb.member()
    learners = [await tb.member() for _ in range(7)]
    donor = await tb.member()
    expect(
        await client.post(
            f"/v1/communities/{tb.id}/donations", json={"minutes": 30}, headers=donor.headers
        ),
        201,
    )
    # 100 minutes for 7: 14 each, 2 from the fund, posted when everyone has confirmed.
    lesson = await tb.propose(
        teacher, [(teacher, 100)], [(x, None) for x in learners], split="equal"
    )
    assert lesson["fund_minutes"] == 2
    assert {p["minutes"] for p in lesson["parties"] if p["role"] == "receiver"} == {14}
    for learner in learners[:-1]:
        await tb.do(lesson["id"], "confirm", learner)
    assert await tb.fund() == 30
    assert (await tb.do(lesson["id"], "confirm", learners[-1]))["status"] == "confirmed"
    assert await tb.balances(teacher, *learners) == [100] + [-14] * 7
    assert await tb.fund() == 28

    # An exact split charges the fund nothing.
    exact = await tb.propose(
        tb.coordinator, [(teacher, 70)], [(x, None) for x in learners], split="equal", mode="record"
    )
    assert exact["fund_minutes"] == 0
    assert await tb.fund() == 28
    assert await tb.balance(learners[0]) == -24


async def test_resolving_a_dispute(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    a = await tb.member()
    b = await tb.member()

    upheld = await tb.propose(a, [(a, 90)], [(b, 90)])
    await tb.do(upheld["id"], "confirm", b)
    await tb.do(upheld["id"], "dispute", b, note="It was an hour")
    replied = await tb.do(upheld["id"], "dispute", a, note="It was ninety minutes")
    assert replied["status"] == "disputed"
    kept = await tb.do(upheld["id"], "resolve", tb.coordinator, outcome="upheld", note="Agreed")
    assert (kept["status"], kept["resolution"], kept["reversal_transaction_id"]) == (
        "resolved",
        "upheld",
        None,
    )
    assert await tb.balances(a, b) == [90, -90]
    assert [e["action"] for e in kept["events"]] == [
        "propose",
        "confirm",
        "posted",
        "dispute",
        "dispute_reply",
        "resolve_upheld",
    ]

    reversed_ = await tb.propose(a, [(a, 60)], [(b, 60)])
    await tb.do(reversed_["id"], "confirm", b)
    await tb.do(reversed_["id"], "dispute", a, note="Wrong person")
    undone = await tb.do(
        reversed_["id"], "resolve", tb.coordinator, outcome="reversed", note="Reverse it"
    )
    assert undone["resolution"] == "reversed"
    assert undone["reversal_transaction_id"] is not None
    assert await tb.balances(a, b) == [90, -90]
    # Exactly once: neither the exchange nor the ledger reverses it again.
    before = await tb.books()
    problem(
        await tb.act(reversed_["id"], "resolve", tb.coordinator, outcome="reversed", note="x"),
        409,
        "invalid_transition",
    )
    problem(await tb.act(reversed_["id"], "dispute", a, note="again"), 409, "invalid_transition")
    problem(
        await client.post(
            f"/v1/transactions/{undone['transaction_id']}/reversal",
            json={"memo": "again"},
            headers=tb.coordinator.headers,
        ),
        409,
        "already_reversed",
    )
    assert await tb.books() == before

    # An exchange whose transaction a coordinator already reversed in the ledger cannot be
    # reversed a second time through a dispute.
    third = await tb.propose(a, [(a, 30)], [(b, 30)])
    await tb.do(third["id"], "confirm", b)
    expect(
        await client.post(
            f"/v1/transactions/{(await tb.exchange(third['id']))['transaction_id']}/reversal",
            json={"memo": "Entered twice"},
            headers=tb.coordinator.headers,
        ),
        201,
    )
    await tb.do(third["id"], "dispute", a, note="Already undone")
    before = await tb.books()
    problem(
        await tb.act(third["id"], "resolve", tb.coordinator, outcome="reversed", note="x"),
        409,
        "already_reversed",
    )
    assert await tb.books() == before
    assert await tb.balances(a, b) == [90, -90]


async def test_idempotent_confirm(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    a = await tb.member()
    b = await tb.member()
    proposal = await tb.propose(a, [(a, 30)], [(b, 30)])
    key = {"Idempotency-Key": "confirm-once", **b.headers}
    url = f"/v1/exchanges/{proposal['id']}/confirm"

    first = await client.post(url, json={"thanks": "Ta"}, headers=key)
    assert first.status_code == 200, first.text
    assert "Idempotency-Replayed" not in first.headers
    again = await client.post(url, json={"thanks": "Ta"}, headers=key)
    assert again.status_code == 200
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.json() == first.json()
    assert await tb.balances(a, b) == [30, -30]

    before = await tb.books()
    problem(
        await client.post(url, json={"thanks": "Different"}, headers=key),
        422,
        "idempotency_key_reused",
    )
    assert await tb.books() == before

    # A refused confirmation stores no outcome: once the limit allows, the same key posts.
    await tb.patch(default_min_balance=-60)
    big = await tb.propose(a, [(a, 90)], [(b, 90)])
    url = f"/v1/exchanges/{big['id']}/confirm"
    retry = {"Idempotency-Key": "confirm-big", **b.headers}
    problem(await client.post(url, json={}, headers=retry), 409, "insufficient_balance")
    assert (await tb.exchange(big["id"]))["status"] == "proposed"
    await tb.patch(default_min_balance=-240)
    posted = await client.post(url, json={}, headers=retry)
    assert posted.status_code == 200, posted.text
    assert "Idempotency-Replayed" not in posted.headers
    assert await tb.balances(a, b) == [120, -120]


async def test_idempotent_donations_and_grants(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app)
    giver = await tb.member()
    needy = await tb.member()
    donate = f"/v1/communities/{tb.id}/donations"
    grant = f"/v1/communities/{tb.id}/grants"

    headers = {"Idempotency-Key": "gift-1", **giver.headers}
    first = await client.post(donate, json={"minutes": 60, "note": "For anyone"}, headers=headers)
    assert first.status_code == 201, first.text
    replay = await client.post(donate, json={"note": "For anyone", "minutes": 60}, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    assert (await tb.fund(), await tb.balance(giver)) == (60, -60)
    before = await tb.books()
    problem(
        await client.post(donate, json={"minutes": 61}, headers=headers),
        422,
        "idempotency_key_reused",
    )
    assert await tb.books() == before

    body = {"member_id": needy.member_id, "minutes": 40, "reason": "Housebound this winter"}
    headers = {"Idempotency-Key": "grant-1", **tb.coordinator.headers}
    first = await client.post(grant, json=body, headers=headers)
    assert first.status_code == 201, first.text
    replay = await client.post(grant, json=body, headers=headers)
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert replay.json() == first.json()
    assert (await tb.fund(), await tb.balance(needy)) == (20, 40)
    problem(
        await client.post(grant, json={**body, "minutes": 41}, headers=headers),
        422,
        "idempotency_key_reused",
    )
    # Keys belong to whoever sent them: another coordinator's same key is a new request.
    other = await tb.api.member(tb.id, tb.root, role="coordinator")
    small = {**body, "minutes": 5}
    assert (
        await client.post(
            grant, json=small, headers={"Idempotency-Key": "grant-1", **other.headers}
        )
    ).status_code == 201
    assert (await tb.fund(), await tb.balance(needy)) == (15, 45)


async def test_fund_rules(client: AsyncClient, app: FastAPI) -> None:
    tb = await community(client, app, default_min_balance=-60)
    member = await tb.member()
    other = await tb.member()
    suspended = await tb.member()
    await tb.set_status(suspended, "suspended")
    donate = f"/v1/communities/{tb.id}/donations"
    grant = f"/v1/communities/{tb.id}/grants"
    cases = [
        # (who, url, body, status, code)
        (
            member,
            grant,
            {"member_id": member.member_id, "minutes": 10, "reason": "me"},
            403,
            "coordinator_required",
        ),
        (
            member,
            donate,
            {"minutes": 10, "member_id": other.member_id},
            403,
            "coordinator_required",
        ),
        (
            tb.coordinator,
            grant,
            {"member_id": member.member_id, "minutes": 10},
            422,
            "validation_error",
        ),
        (
            tb.coordinator,
            grant,
            {"member_id": member.member_id, "minutes": 10, "reason": ""},
            422,
            "validation_error",
        ),
        (
            tb.coordinator,
            grant,
            {"member_id": "nobody", "minutes": 10, "reason": "x"},
            422,
            "party_not_found",
        ),
        (
            tb.coordinator,
            grant,
            {"member_id": suspended.member_id, "minutes": 10, "reason": "x"},
            409,
            "party_not_active",
        ),
        (
            tb.coordinator,
            donate,
            {"minutes": 10, "member_id": suspended.member_id},
            409,
            "party_not_active",
        ),
        (member, donate, {"minutes": 0}, 422, "validation_error"),
        (member, donate, {"minutes": 1.5}, 422, "validation_error"),
        (member, donate, {"minutes": 61}, 409, "insufficient_balance"),
        # The fund holds nothing yet: it cannot grant below its own limit.
        (
            tb.coordinator,
            grant,
            {"member_id": member.member_id, "minutes": 6000, "reason": "x"},
            409,
            "insufficient_balance",
        ),
    ]
    for who, url, body, status, code in cases:
        before = await tb.books()
        problem(await client.post(url, json=body, headers=who.headers), status, code)
        assert await tb.books() == before, (url, body)

    # A coordinator may donate on a member's behalf; the fund shows what it holds.
    expect(
        await client.post(
            donate,
            json={"minutes": 25, "member_id": other.member_id},
            headers=tb.coordinator.headers,
        ),
        201,
    )
    fund = expect(await client.get(f"/v1/communities/{tb.id}/fund", headers=member.headers), 200)
    assert fund["account"]["balance"] == 25
    assert await tb.balance(other) == -25

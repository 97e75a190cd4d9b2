"""End-to-end: what members actually do, with the books checked to the minute at each step."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.factories import Actor, Api, expect

pytestmark = pytest.mark.anyio

TODAY = date.today().isoformat()


async def balances(client: AsyncClient, by: Actor, *people: Actor) -> list[int]:
    result = []
    for person in people:
        body = expect(
            await client.get(f"/v1/accounts/{person.account_id}", headers=by.headers), 200
        )
        result.append(body["balance"])
    return result


async def fund_balance(client: AsyncClient, community_id: str, by: Actor) -> int:
    body = expect(await client.get(f"/v1/communities/{community_id}/fund", headers=by.headers), 200)
    return int(body["account"]["balance"])


def exchange_body(
    providers: list[tuple[Actor, int]], receivers: list[tuple[Actor, int | None]], **extra: Any
) -> dict[str, Any]:
    return {
        "providers": [{"member_id": p.member_id, "minutes": m} for p, m in providers],
        "receivers": [
            {"member_id": r.member_id} if m is None else {"member_id": r.member_id, "minutes": m}
            for r, m in receivers
        ],
        "description": extra.pop("description", "Helped out"),
        "category": extra.pop("category", "gardening"),
        "occurred_on": extra.pop("occurred_on", TODAY),
        **extra,
    }


async def test_co_production_week(client: AsyncClient, app: FastAPI) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    cid = community["id"]
    coordinator = await api.member(cid, admin, role="coordinator", kind="professional")
    gp = await api.member(cid, admin, kind="professional", name="Dr Okafor")
    citizens = [await api.member(cid, admin, kind="citizen") for _ in range(5)]

    # A professional gives a 60-minute group session to five citizens, split equally.
    proposal = expect(
        await client.post(
            f"/v1/communities/{cid}/exchanges",
            json=exchange_body(
                [(gp, 60)],
                [(c, None) for c in citizens],
                split="equal",
                category="health and wellbeing",
            ),
            headers=gp.headers,
        ),
        201,
    )
    assert proposal["status"] == "proposed"
    assert proposal["fund_minutes"] == 0
    assert {p["minutes"] for p in proposal["parties"] if p["role"] == "receiver"} == {12}

    # Each citizen confirms their own share; the posting waits for the last one.
    for index, citizen in enumerate(citizens):
        body = {"thanks": "Lovely session"} if index == 0 else {}
        confirmed = expect(
            await client.post(
                f"/v1/exchanges/{proposal['id']}/confirm", json=body, headers=citizen.headers
            ),
            200,
        )
        assert confirmed["status"] == ("confirmed" if index == 4 else "proposed")
        assert (confirmed["transaction_id"] is not None) == (index == 4)
    assert await balances(client, admin, gp, *citizens) == [60, -12, -12, -12, -12, -12]

    # Roles blur: one of those citizens gives the professional two hours of help.
    helper = citizens[0]
    blur = expect(
        await client.post(
            f"/v1/communities/{cid}/exchanges",
            json=exchange_body(
                [(helper, 120)], [(gp, 120)], description="Taught the GP to prune roses"
            ),
            headers=helper.headers,
        ),
        201,
    )
    pending = expect(await client.get("/v1/me/pending", headers=gp.headers), 200)
    assert [item["exchange"]["id"] for item in pending["items"]] == [blur["id"]]
    assert pending["items"][0]["action"] == "confirm"
    expect(
        await client.post(f"/v1/exchanges/{blur['id']}/confirm", json={}, headers=gp.headers), 200
    )
    assert await balances(client, admin, gp, helper) == [-60, 108]

    # A donation into the fund and a grant out of it.
    expect(
        await client.post(
            f"/v1/communities/{cid}/donations", json={"minutes": 30}, headers=helper.headers
        ),
        201,
    )
    assert await fund_balance(client, cid, helper) == 30
    grant = expect(
        await client.post(
            f"/v1/communities/{cid}/grants",
            json={
                "member_id": citizens[1].member_id,
                "minutes": 20,
                "reason": "Cannot give back yet",
            },
            headers=coordinator.headers,
        ),
        201,
    )
    assert grant["kind"] == "grant"
    assert await fund_balance(client, cid, helper) == 10
    assert await balances(client, admin, helper, citizens[1]) == [78, 8]

    # A rejected and a cancelled proposal move nothing.
    rejected = expect(
        await client.post(
            f"/v1/communities/{cid}/exchanges",
            json=exchange_body([(citizens[2], 30)], [(citizens[3], 30)]),
            headers=citizens[2].headers,
        ),
        201,
    )
    expect(
        await client.post(
            f"/v1/exchanges/{rejected['id']}/reject",
            json={"note": "Did not happen"},
            headers=citizens[3].headers,
        ),
        200,
    )
    cancelled = expect(
        await client.post(
            f"/v1/communities/{cid}/exchanges",
            json=exchange_body([(citizens[3], 45)], [(citizens[4], 45)]),
            headers=citizens[3].headers,
        ),
        201,
    )
    expect(
        await client.post(
            f"/v1/exchanges/{cancelled['id']}/cancel", json={}, headers=citizens[3].headers
        ),
        200,
    )
    assert await balances(client, admin, citizens[2], citizens[3], citizens[4]) == [-12, -12, -12]

    # A dispute resolved by reversal puts the hours back.
    disputed = expect(
        await client.post(
            f"/v1/exchanges/{blur['id']}/dispute",
            json={"note": "It was one hour"},
            headers=gp.headers,
        ),
        200,
    )
    assert disputed["status"] == "disputed"
    coordinator_inbox = expect(await client.get("/v1/me/pending", headers=coordinator.headers), 200)
    assert [i["action"] for i in coordinator_inbox["items"]] == ["resolve_dispute"]
    resolved = expect(
        await client.post(
            f"/v1/exchanges/{blur['id']}/resolve",
            json={"outcome": "reversed", "note": "Agreed with both"},
            headers=coordinator.headers,
        ),
        200,
    )
    assert resolved["status"] == "resolved"
    assert resolved["resolution"] == "reversed"
    assert [e["action"] for e in resolved["events"]] == [
        "propose",
        "confirm",
        "posted",
        "dispute",
        "resolve_reversed",
    ]
    assert await balances(client, admin, gp, helper) == [60, -42]

    # The statement tells the same story, newest first, with running balances.
    statement = expect(
        await client.get(f"/v1/accounts/{gp.account_id}/entries", headers=gp.headers), 200
    )
    assert [
        (line["kind"], line["minutes"], line["balance_after"]) for line in statement["items"]
    ] == [
        ("reversal", 120, 60),
        ("exchange", -120, -60),
        ("exchange", 60, 60),
    ]

    # The provider's profile carries the thanks.
    thanks = expect(
        await client.get(f"/v1/members/{gp.member_id}/thanks", headers=citizens[2].headers), 200
    )
    assert [t["thanks"] for t in thanks["items"]] == ["Lovely session"]


async def test_equal_split_remainder_is_paid_by_the_fund(client: AsyncClient, app: FastAPI) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    cid = community["id"]
    provider = await api.member(cid, admin, with_login=False)
    receivers = [await api.member(cid, admin, with_login=False) for _ in range(7)]
    donor = await api.member(cid, admin)
    expect(
        await client.post(
            f"/v1/communities/{cid}/donations", json={"minutes": 10}, headers=donor.headers
        ),
        201,
    )

    recorded = expect(
        await client.post(
            f"/v1/communities/{cid}/exchanges",
            json=exchange_body(
                [(provider, 60)], [(r, None) for r in receivers], split="equal", mode="record"
            ),
            headers=admin.headers,
        ),
        201,
    )
    assert recorded["status"] == "confirmed"
    assert recorded["recorded_by_coordinator"] is True
    assert recorded["fund_minutes"] == 4
    assert await balances(client, admin, provider, *receivers) == [60] + [-8] * 7
    assert await fund_balance(client, cid, admin) == 6


async def test_a_confirmation_that_breaks_a_limit_is_refused_and_stays_proposed(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    community, admin = await api.community(default_min_balance=-60)
    cid = community["id"]
    giver = await api.member(cid, admin)
    taker = await api.member(cid, admin)
    proposal = expect(
        await client.post(
            f"/v1/communities/{cid}/exchanges",
            json=exchange_body([(giver, 90)], [(taker, 90)]),
            headers=giver.headers,
        ),
        201,
    )
    refused = expect(
        await client.post(
            f"/v1/exchanges/{proposal['id']}/confirm", json={}, headers=taker.headers
        ),
        409,
    )
    assert refused["code"] == "insufficient_balance"
    after = expect(await client.get(f"/v1/exchanges/{proposal['id']}", headers=taker.headers), 200)
    assert after["status"] == "proposed"
    assert all(
        p["confirmed_at"] is None for p in after["parties"] if p["member_id"] == taker.member_id
    )
    assert await balances(client, admin, giver, taker) == [0, 0]


async def test_occurred_on_outside_the_window_is_refused(client: AsyncClient, app: FastAPI) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    cid = community["id"]
    a = await api.member(cid, admin)
    b = await api.member(cid, admin)
    for when in (date.today() + timedelta(days=1), date.today() - timedelta(days=91)):
        refused = expect(
            await client.post(
                f"/v1/communities/{cid}/exchanges",
                json=exchange_body([(a, 30)], [(b, 30)], occurred_on=when.isoformat()),
                headers=a.headers,
            ),
            422,
        )
        assert refused["code"] == "occurred_on_out_of_range"
    listed = expect(
        await client.get(f"/v1/communities/{cid}/exchanges", headers=admin.headers), 200
    )
    assert listed["items"] == []

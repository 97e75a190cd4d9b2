"""Who may do what to an exchange: every transition against every kind of caller.

The exchange is always between ``proposer`` (who gives 30 minutes and proposed it) and
``counterparty`` (who received them). Each refusal must leave the books exactly as they were;
each success must move the exchange where the rules say.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response

from tests.exchanges.helpers import Community, community, exchange_body

pytestmark = pytest.mark.anyio

ROLES = (
    "proposer",
    "counterparty",
    "third_party",
    "coordinator",
    "admin",
    "outsider",
    "partner_read",
    "partner_write",
    "partner_none",
    "anonymous",
)

OK = (200, None)
CREATED = (201, None)
UNAUTHENTICATED = (401, "invalid_token")
NO_SCOPE = (403, "insufficient_scope")
UNSEEN = (404, "exchange_not_found")


def table(**overrides: tuple[int, str | None]) -> dict[str, tuple[int, str | None]]:
    """The usual answer for a transition on an existing exchange, with ``overrides``:
    people who cannot see the exchange get 404; partner clients without exchanges:write 403."""
    base: dict[str, tuple[int, str | None]] = {
        "third_party": UNSEEN,
        "coordinator": OK,
        "admin": OK,
        "outsider": UNSEEN,
        "partner_read": NO_SCOPE,
        "partner_write": OK,
        "partner_none": NO_SCOPE,
        "anonymous": UNAUTHENTICATED,
    }
    base.update(overrides)
    assert set(base) == set(ROLES), set(ROLES) - set(base)
    return base


@dataclass
class World:
    tb: Community
    headers: dict[str, dict[str, str]]

    @property
    def proposer(self) -> Any:
        return self.tb.members[0]

    @property
    def counterparty(self) -> Any:
        return self.tb.members[1]


async def build_world(client: AsyncClient, app: FastAPI) -> World:
    tb = await community(client, app)
    proposer = await tb.member()
    counterparty = await tb.member()
    third = await tb.member()
    admin = await tb.api.member(tb.id, tb.root, role="admin")
    other = await community(client, app)
    outsider = await other.member()
    headers = {
        "proposer": proposer.headers,
        "counterparty": counterparty.headers,
        "third_party": third.headers,
        "coordinator": tb.coordinator.headers,
        "admin": admin.headers,
        "outsider": outsider.headers,
        "partner_read": await tb.partner("exchanges:read"),
        "partner_write": await tb.partner("exchanges:write"),
        "partner_none": await tb.partner("members:read", "ledger:read"),
        "anonymous": {},
    }
    return World(tb=tb, headers=headers)


async def proposed(w: World) -> str:
    created = await w.tb.propose(w.proposer, [(w.proposer, 30)], [(w.counterparty, 30)])
    return str(created["id"])


async def confirmed(w: World) -> str:
    exchange_id = await proposed(w)
    await w.tb.do(exchange_id, "confirm", w.counterparty)
    return exchange_id


async def disputed(w: World) -> str:
    exchange_id = await confirmed(w)
    await w.tb.do(exchange_id, "dispute", w.counterparty, note="It was shorter")
    return exchange_id


Setup = Callable[[World], Awaitable[str | None]]
Act = Callable[[World, str | None, dict[str, str]], Awaitable[Response]]


async def _nothing(w: World) -> None:
    return None


def _create(mode: str) -> Act:
    async def act(w: World, _: str | None, headers: dict[str, str]) -> Response:
        body = exchange_body([(w.proposer, 30)], [(w.counterparty, 30)], mode=mode)
        return await w.tb.client.post(
            f"/v1/communities/{w.tb.id}/exchanges", json=body, headers=headers
        )

    return act


def _transition(action: str, **body: Any) -> Act:
    async def act(w: World, exchange_id: str | None, headers: dict[str, str]) -> Response:
        assert exchange_id is not None
        payload = {
            k: (w.counterparty.member_id if v == "<counterparty>" else v) for k, v in body.items()
        }
        return await w.tb.act(exchange_id, action, headers, **payload)

    return act


async def _read(w: World, exchange_id: str | None, headers: dict[str, str]) -> Response:
    return await w.tb.client.get(f"/v1/exchanges/{exchange_id}", headers=headers)


@dataclass(frozen=True)
class Case:
    setup: Setup
    act: Act
    expected: dict[str, tuple[int, str | None]]
    status_after: str  # the exchange's status after a success
    resolution: str | None = None


CASES: dict[str, Case] = {
    "propose": Case(
        _nothing,
        _create("propose"),
        table(
            proposer=CREATED,
            counterparty=CREATED,
            third_party=(403, "proposer_not_party"),
            coordinator=CREATED,
            admin=CREATED,
            outsider=(403, "not_a_member"),
            partner_write=CREATED,
        ),
        "proposed",
    ),
    "record": Case(
        _nothing,
        _create("record"),
        table(
            proposer=(403, "coordinator_required"),
            counterparty=(403, "coordinator_required"),
            third_party=(403, "coordinator_required"),
            coordinator=CREATED,
            admin=CREATED,
            outsider=(403, "not_a_member"),
            partner_write=CREATED,
        ),
        "confirmed",
    ),
    "read": Case(
        proposed,
        _read,
        # Scopes are independent across the API (as in the ledger): write does not imply read.
        table(proposer=OK, counterparty=OK, partner_read=OK, partner_write=NO_SCOPE),
        "proposed",
    ),
    "confirm": Case(
        proposed,
        _transition("confirm"),
        table(proposer=(409, "cannot_confirm_own_proposal"), counterparty=OK),
        "confirmed",
    ),
    "confirm_on_behalf_of": Case(
        proposed,
        _transition("confirm", on_behalf_of="<counterparty>"),
        # The counterparty naming themselves simply confirms their own share.
        table(proposer=(403, "coordinator_required"), counterparty=OK),
        "confirmed",
    ),
    "reject": Case(
        proposed,
        _transition("reject", note="Never happened"),
        table(proposer=(409, "invalid_transition"), counterparty=OK),
        "rejected",
    ),
    "cancel": Case(
        proposed,
        _transition("cancel"),
        table(proposer=OK, counterparty=(403, "not_a_party")),
        "cancelled",
    ),
    "dispute": Case(
        confirmed,
        _transition("dispute", note="That was not two hours"),
        table(proposer=OK, counterparty=OK),
        "disputed",
    ),
    "resolve_upheld": Case(
        disputed,
        _transition("resolve", outcome="upheld", note="Both agree it happened"),
        table(proposer=(403, "coordinator_required"), counterparty=(403, "coordinator_required")),
        "resolved",
        "upheld",
    ),
    "resolve_reversed": Case(
        disputed,
        _transition("resolve", outcome="reversed", note="It did not happen"),
        table(proposer=(403, "coordinator_required"), counterparty=(403, "coordinator_required")),
        "resolved",
        "reversed",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_who_may_do_what(name: str, client: AsyncClient, app: FastAPI) -> None:
    case = CASES[name]
    w = await build_world(client, app)
    mismatches: list[str] = []
    for role in ROLES:
        exchange_id = await case.setup(w)
        before = await w.tb.books()
        response = await case.act(w, exchange_id, w.headers[role])
        status, code = case.expected[role]
        got_code = response.json().get("code") if response.status_code >= 400 else None
        if (response.status_code, got_code) != (status, code):
            mismatches.append(
                f"{role}: expected {status} {code}, got {response.status_code} {got_code}"
            )
            continue
        if status >= 400:
            assert response.headers["content-type"].startswith("application/problem+json")
            assert await w.tb.books() == before, f"{role}'s refused {name} changed the books"
            continue
        body = response.json()
        assert body["status"] == case.status_after, (role, body["status"])
        assert body["resolution"] == case.resolution
        if name == "read":
            assert body["id"] == exchange_id
    assert not mismatches, "\n".join(mismatches)


async def test_every_successful_transition_moves_hours_exactly_as_promised(
    client: AsyncClient, app: FastAPI
) -> None:
    """Balances after each successful transition, for the coordinator acting."""
    w = await build_world(client, app)
    tb, giver, taker = w.tb, w.proposer, w.counterparty

    rejected = await proposed(w)
    await tb.do(rejected, "reject", tb.coordinator)
    cancelled = await proposed(w)
    await tb.do(cancelled, "cancel", tb.coordinator)
    assert await tb.balances(giver, taker) == [0, 0]

    upheld = await disputed(w)
    assert await tb.balances(giver, taker) == [30, -30]
    await tb.do(upheld, "resolve", tb.coordinator, outcome="upheld", note="Fine")
    assert await tb.balances(giver, taker) == [30, -30]

    reversed_ = await disputed(w)
    assert await tb.balances(giver, taker) == [60, -60]
    await tb.do(reversed_, "resolve", w.headers["partner_write"], outcome="reversed", note="No")
    assert await tb.balances(giver, taker) == [30, -30]

    recorded = await tb.client.post(
        f"/v1/communities/{tb.id}/exchanges",
        json=exchange_body([(giver, 45)], [(taker, 45)], mode="record"),
        headers=w.headers["partner_write"],
    )
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["recorded_by_coordinator"] is True
    assert await tb.balances(giver, taker) == [75, -75]

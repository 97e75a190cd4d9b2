"""The ledger's invariants under random use: a Hypothesis state machine.

Random sequences of postings (some breaking limits), reversals (of reversals, and twice),
limit changes that strand balances out of range, and malformed requests. After every step the
database itself is checked against DESIGN.md's invariants and against a model of what the
books should say; a refused step must leave the database exactly as it was.

Driving an async app from Hypothesis (which is synchronous): the test is an ordinary async
test with the usual ``app`` and ``client`` fixtures, so the app's lifespan, engine and
connections all live on the test's event loop. It runs the state machine in a worker thread
(``anyio.to_thread.run_sync``); each step sends its coroutine back to the event loop with
``anyio.from_thread.run`` and blocks until it completes. One loop, one engine, no nesting of
loops, and every Hypothesis example gets a fresh community in the same database.
"""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import anyio.from_thread
import anyio.to_thread
import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from app.models import Account
from tests.factories import Actor, Api, expect
from tests.ledger.helpers import books_snapshot, check_books, refused
from tests.ledger.invariants import Snapshot
from tests.ledger.profiles import ledger_profile

pytestmark = pytest.mark.anyio

T = TypeVar("T")
MEMBERS = 4  # plus the community fund: five accounts to post between
MAX_ENTRY_MINUTES = 600_000
DEFAULT_MIN, DEFAULT_MAX = -20 * 60, 100 * 60

MACHINE_SETTINGS = settings(
    settings.get_profile(ledger_profile()),
    max_examples=15,
    stateful_step_count=30,
    deadline=None,
)


async def _await(coroutine: Coroutine[Any, Any, T]) -> T:
    return await coroutine


@dataclass
class Harness:
    """What every example shares: the app, a platform admin, another community's account."""

    client: AsyncClient
    app: FastAPI
    api: Api
    platform_admin: Actor
    foreign_account_id: str

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the test's event loop and wait for it (from the worker)."""
        return anyio.from_thread.run(_await, coroutine)


@dataclass
class ModelAccount:
    id: str
    min_override: int | None = None
    max_override: int | None = None
    balance: int = 0
    version: int = 0


@dataclass
class ModelTransaction:
    id: str
    kind: str
    lines: list[tuple[int, int]]  # (account index, minutes)
    reversed: bool = False


@dataclass
class LastPosting:
    key: str
    body: dict[str, Any]
    response: dict[str, Any]


class Omit(enum.Enum):
    """A PATCH field left out (``None`` means an explicit null)."""

    FIELD = 0


@dataclass
class Expectation:
    status: int
    codes: set[str] = field(default_factory=set)

    @property
    def posts(self) -> bool:
        return self.status == 201


amounts = st.one_of(st.integers(-1500, 1500), st.integers(-9000, 9000)).filter(bool)


@st.composite
def postings(draw: st.DrawFn) -> list[tuple[int, int]]:
    """2..5 distinct accounts with random minutes; the last line balances the others (so it
    is occasionally zero, which the ledger must refuse)."""
    size = draw(st.integers(2, 5))
    accounts = draw(st.lists(st.integers(0, MEMBERS), min_size=size, max_size=size, unique=True))
    minutes = draw(st.lists(amounts, min_size=size - 1, max_size=size - 1))
    minutes.append(-sum(minutes))
    return list(zip(accounts, minutes, strict=True))


class InvalidCase(enum.Enum):
    unbalanced = "unbalanced"
    single_entry = "single_entry"
    zero = "zero"
    fractional = "fractional"
    float_minutes = "float_minutes"
    string_minutes = "string_minutes"
    too_large = "too_large"
    no_entries = "no_entries"
    unknown_account = "unknown_account"
    malformed_account_id = "malformed_account_id"
    foreign_account = "foreign_account"
    duplicate_account = "duplicate_account"
    missing_key = "missing_key"
    extra_field = "extra_field"


class LedgerMachine(RuleBasedStateMachine):
    harness: ClassVar[Harness | None] = None

    def __init__(self) -> None:
        super().__init__()
        assert self.harness is not None
        self.h: Harness = self.harness
        self.community_id = ""
        self.admin: Actor = self.h.platform_admin
        self.accounts: list[ModelAccount] = []
        self.default_min = DEFAULT_MIN
        self.default_max = DEFAULT_MAX
        self.transactions: list[ModelTransaction] = []
        self.last_posting: LastPosting | None = None

    # --- setup ------------------------------------------------------------------------------

    @initialize()
    def open_community(self) -> None:
        community, admin = self.h.run(self.h.api.community(self.h.platform_admin))
        self.community_id = str(community["id"])
        self.admin = admin
        members = [
            self.h.run(self.h.api.member(self.community_id, admin, with_login=False))
            for _ in range(MEMBERS)
        ]
        self.accounts = [ModelAccount(id=m.account_id) for m in members]
        fund = ModelAccount(
            id=str(community["fund_account_id"]), min_override=0, max_override=600_000_000
        )
        self.accounts.append(fund)

    # --- the model --------------------------------------------------------------------------

    def limits(self, account: ModelAccount) -> tuple[int, int]:
        low = self.default_min if account.min_override is None else account.min_override
        high = self.default_max if account.max_override is None else account.max_override
        return low, high

    def expect_posting(self, lines: list[tuple[int, int]]) -> Expectation:
        """What the ledger must answer; every refusal reason that applies is acceptable."""
        shape: set[str] = set()
        if len(lines) < 2:
            shape.add("too_few_entries")
        if any(m == 0 for _, m in lines):
            shape.add("zero_amount")
        if len({a for a, _ in lines}) != len(lines):
            shape.add("duplicate_account")
        if sum(m for _, m in lines) != 0:
            shape.add("unbalanced")
        if shape:
            return Expectation(422, shape)
        limits: set[str] = set()
        for index, minutes in lines:
            account = self.accounts[index]
            low, high = self.limits(account)
            after = account.balance + minutes
            if minutes < 0 and after < low:
                limits.add("insufficient_balance")
            if minutes > 0 and after > high:
                limits.add("over_balance_cap")
        return Expectation(409, limits) if limits else Expectation(201)

    def apply_posted(self, lines: list[tuple[int, int]], posted: dict[str, Any]) -> None:
        """Check the posted entries against the model (running balances, invariant 4), then
        advance the model."""
        assert [(e["account_id"], e["minutes"]) for e in posted["entries"]] == [
            (self.accounts[i].id, m) for i, m in lines
        ]
        for (index, minutes), entry in zip(lines, posted["entries"], strict=True):
            account = self.accounts[index]
            before, after = account.balance, account.balance + minutes
            assert entry["balance_after"] == after
            assert entry["account_version"] == account.version + 1
            low, high = self.limits(account)
            # Invariant 4: within limits, or an out-of-range balance moving toward its range.
            assert (
                low <= after <= high
                or (minutes > 0 and before < low and after <= high)
                or (minutes < 0 and before > high and after >= low)
            ), f"{before} {minutes:+d} -> {after} outside [{low}, {high}]"
            account.balance, account.version = after, account.version + 1

    def snapshot(self) -> Snapshot:
        return self.h.run(books_snapshot(self.h.app))

    def assert_unchanged(self, before: Snapshot) -> None:
        assert self.snapshot() == before, "a refused request changed the database"

    def send(
        self, body: dict[str, Any], *, key: str | None = None, with_key: bool = True
    ) -> Response:
        headers = dict(self.admin.headers)
        if with_key:
            headers["Idempotency-Key"] = key or str(uuid.uuid4())
        return self.h.run(
            self.h.client.post(
                f"/v1/communities/{self.community_id}/transactions", json=body, headers=headers
            )
        )

    def body(self, lines: list[tuple[str, object]], kind: str = "transfer") -> dict[str, Any]:
        return {
            "kind": kind,
            "entries": [{"account_id": a, "minutes": m} for a, m in lines],
            "memo": "random",
        }

    # --- rules ------------------------------------------------------------------------------

    @rule(lines=postings(), kind=st.sampled_from(["transfer", "adjustment", "opening"]))
    def post(self, lines: list[tuple[int, int]], kind: str) -> None:
        expected = self.expect_posting(lines)
        before = self.snapshot()
        key = str(uuid.uuid4())
        body = self.body([(self.accounts[i].id, m) for i, m in lines], kind)
        response = self.send(body, key=key)
        event(f"post -> {response.status_code} {response.json().get('code', '')}")
        if expected.posts:
            posted = expect(response, 201)
            self.apply_posted(lines, posted)
            self.transactions.append(ModelTransaction(id=posted["id"], kind=kind, lines=lines))
            self.last_posting = LastPosting(key=key, body=body, response=posted)
        else:
            assert response.status_code == expected.status, response.text
            assert response.json()["code"] in expected.codes, (response.text, expected)
            self.assert_unchanged(before)

    @precondition(lambda self: self.transactions)
    @rule(pick=st.integers(0, 10_000), with_key=st.booleans(), retry=st.booleans())
    def reverse(self, pick: int, with_key: bool, retry: bool) -> None:
        original = self.transactions[pick % len(self.transactions)]
        mirror = [(i, -m) for i, m in original.lines]
        if original.kind == "reversal":
            expected = Expectation(409, {"reversal_not_reversible"})
        elif original.reversed:
            expected = Expectation(409, {"already_reversed"})
        else:
            expected = self.expect_posting(mirror)
        before = self.snapshot()
        headers = dict(self.admin.headers)
        if with_key:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        url = f"/v1/transactions/{original.id}/reversal"
        response = self.h.run(self.h.client.post(url, json={"memo": "undo"}, headers=headers))
        event(f"reverse -> {response.status_code} {response.json().get('code', '')}")
        if not expected.posts:
            assert response.status_code == expected.status, response.text
            assert response.json()["code"] in expected.codes, (response.text, expected)
            self.assert_unchanged(before)
            return
        posted = expect(response, 201)
        assert posted["reverses_id"] == original.id
        assert posted["kind"] == "reversal"
        self.apply_posted(mirror, posted)
        original.reversed = True
        self.transactions.append(ModelTransaction(id=posted["id"], kind="reversal", lines=mirror))
        shown = expect(
            self.h.run(self.h.client.get(f"/v1/transactions/{original.id}", headers=headers)),
            200,
        )
        assert shown["reversed_by_id"] == posted["id"]
        if retry:  # the client retries: with its key it gets the same answer, without, a 409
            after = self.snapshot()
            again = self.h.run(self.h.client.post(url, json={"memo": "undo"}, headers=headers))
            if with_key:
                assert expect(again, 201) == posted
                assert again.headers["Idempotency-Replayed"] == "true"
            else:
                refused(again, 409, "already_reversed")
            self.assert_unchanged(after)

    @rule(
        index=st.integers(0, MEMBERS),
        min_balance=st.one_of(st.just(Omit.FIELD), st.none(), st.integers(-3000, 0)),
        max_balance=st.one_of(st.just(Omit.FIELD), st.none(), st.integers(0, 8000)),
    )
    def change_account_limits(
        self, index: int, min_balance: int | Omit | None, max_balance: int | Omit | None
    ) -> None:
        account = self.accounts[index]
        body: dict[str, Any] = {"reason": "state machine"}
        if not isinstance(min_balance, Omit):
            body["min_balance"] = min_balance
        if not isinstance(max_balance, Omit):
            body["max_balance"] = max_balance
        before = self.snapshot()
        response = self.h.run(
            self.h.client.patch(f"/v1/accounts/{account.id}", json=body, headers=self.admin.headers)
        )
        read = expect(response, 200)
        if not isinstance(min_balance, Omit):
            account.min_override = min_balance
        if not isinstance(max_balance, Omit):
            account.max_override = max_balance
        assert (read["min_balance"], read["max_balance"]) == self.limits(account)
        assert read["min_balance_override"] == account.min_override
        assert read["max_balance_override"] == account.max_override
        assert read["balance"] == account.balance  # limits never move hours
        assert self.snapshot().limit_changes == before.limit_changes + 1

    @precondition(lambda self: any(a.balance for a in self.accounts[:MEMBERS]))
    @rule(pick=st.integers(0, 10_000), margin=st.integers(1, 600))
    def strand_a_balance(self, pick: int, margin: int) -> None:
        """Tighten an account's limit past its balance, as an admin may: the balance is now
        out of range and may only move back toward it."""
        stranded = [a for a in self.accounts[:MEMBERS] if a.balance]
        account = stranded[pick % len(stranded)]
        if account.balance < 0:
            body = {"min_balance": min(0, account.balance + margin)}
        else:
            body = {"max_balance": max(0, account.balance - margin)}
        read = expect(
            self.h.run(
                self.h.client.patch(
                    f"/v1/accounts/{account.id}", json=body, headers=self.admin.headers
                )
            ),
            200,
        )
        account.min_override = read["min_balance_override"]
        account.max_override = read["max_balance_override"]
        low, high = self.limits(account)
        event("stranded out of range" if not low <= account.balance <= high else "not stranded")

    @precondition(lambda self: bool(self._out_of_range()))
    @rule(pick=st.integers(0, 10_000), other=st.integers(0, MEMBERS), minutes=st.integers(1, 900))
    def move_toward_range(self, pick: int, other: int, minutes: int) -> None:
        """Post toward the range of an out-of-range account (allowed), or past it (refused)."""
        stranded = self._out_of_range()
        index = stranded[pick % len(stranded)]
        low, _ = self.limits(self.accounts[index])
        signed = minutes if self.accounts[index].balance < low else -minutes
        # Prefer a counterparty that can take the other side, so the move itself is tested.
        candidates = [i for i in range(MEMBERS + 1) if i != index]
        with_room = [
            i
            for i in candidates
            if self.limits(self.accounts[i])[0]
            <= self.accounts[i].balance - signed
            <= self.limits(self.accounts[i])[1]
        ]
        pool = with_room or candidates
        self.post([(index, signed), (pool[other % len(pool)], -signed)], "transfer")

    def _out_of_range(self) -> list[int]:
        return [
            i
            for i, a in enumerate(self.accounts)
            if not self.limits(a)[0] <= a.balance <= self.limits(a)[1]
        ]

    @rule(
        default_min=st.one_of(st.none(), st.integers(-3000, 0)),
        default_max=st.one_of(st.none(), st.integers(0, 8000)),
    )
    def change_community_defaults(self, default_min: int | None, default_max: int | None) -> None:
        body: dict[str, Any] = {}
        if default_min is not None:
            body["default_min_balance"] = default_min
        if default_max is not None:
            body["default_max_balance"] = default_max
        read = expect(
            self.h.run(
                self.h.client.patch(
                    f"/v1/communities/{self.community_id}", json=body, headers=self.admin.headers
                )
            ),
            200,
        )
        self.default_min = read["default_min_balance"]
        self.default_max = read["default_max_balance"]
        assert (self.default_min, self.default_max) == (
            self.default_min if default_min is None else default_min,
            self.default_max if default_max is None else default_max,
        )

    @rule(case=st.sampled_from(InvalidCase), a=st.integers(0, MEMBERS), b=st.integers(0, MEMBERS))
    def invalid_request(self, case: InvalidCase, a: int, b: int) -> None:
        if a == b:
            b = (a + 1) % (MEMBERS + 1)
        first, second = self.accounts[a].id, self.accounts[b].id
        lines: list[tuple[str, object]] = [(first, 30), (second, -30)]
        status, code, with_key = 422, "validation_error", True
        match case:
            case InvalidCase.unbalanced:
                lines, code = [(first, 30), (second, -29)], "unbalanced"
            case InvalidCase.single_entry:
                lines, code = [(first, 30)], "too_few_entries"
            case InvalidCase.zero:
                lines, code = [(first, 0), (second, 0)], "zero_amount"
            case InvalidCase.fractional:
                lines = [(first, 30.5), (second, -30.5)]
            case InvalidCase.float_minutes:
                lines = [(first, 30.0), (second, -30.0)]
            case InvalidCase.string_minutes:
                lines = [(first, "30"), (second, "-30")]
            case InvalidCase.too_large:
                lines = [(first, MAX_ENTRY_MINUTES + 1), (second, -MAX_ENTRY_MINUTES - 1)]
            case InvalidCase.no_entries:
                lines = []
            case InvalidCase.unknown_account:
                lines, status, code = (
                    [(first, 30), (str(uuid.uuid4()), -30)],
                    404,
                    "account_not_found",
                )
            case InvalidCase.malformed_account_id:
                lines, status, code = [(first, 30), ("not-an-id", -30)], 404, "account_not_found"
            case InvalidCase.foreign_account:
                lines = [(first, 30), (self.h.foreign_account_id, -30)]
                status, code = 404, "account_not_found"
            case InvalidCase.duplicate_account:
                lines, code = [(first, 30), (first, -30)], "duplicate_account"
            case InvalidCase.missing_key:
                status, code, with_key = 400, "idempotency_key_required", False
            case InvalidCase.extra_field:
                pass
        body = self.body(lines)
        if case is InvalidCase.extra_field:
            body["amount_in_hours"] = 1
        before = self.snapshot()
        refused(self.send(body, with_key=with_key), status, code)
        self.assert_unchanged(before)

    @precondition(lambda self: self.last_posting is not None)
    @rule(same_body=st.booleans())
    def retry_last_posting(self, same_body: bool) -> None:
        """A client retries with its Idempotency-Key: the same request replays the first
        answer; a different request under that key is refused. Neither posts again."""
        last = self.last_posting
        assert last is not None
        before = self.snapshot()
        body = dict(last.body)
        if not same_body:
            body["memo"] = "something else"
        response = self.send(body, key=last.key)
        if same_body:
            assert expect(response, 201) == last.response
            assert response.headers["Idempotency-Replayed"] == "true"
        else:
            refused(response, 422, "idempotency_key_reused")
        self.assert_unchanged(before)

    # --- after every step -------------------------------------------------------------------

    @invariant()
    def books_are_right(self) -> None:
        if not self.accounts:
            return
        self.h.run(check_books(self.h.app, self.community_id))
        self.h.run(self._model_matches_database())

    async def _model_matches_database(self) -> None:
        async with self.h.app.state.sessionmaker() as session:
            rows = await session.execute(
                select(Account.id, Account.balance, Account.version).where(
                    Account.id.in_([uuid.UUID(a.id) for a in self.accounts])
                )
            )
            stored = {str(i): (balance, version) for i, balance, version in rows}
        assert stored == {a.id: (a.balance, a.version) for a in self.accounts}


async def test_the_ledger_invariants_hold_after_every_step(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    platform_admin = await api.platform_admin()
    other_community, _ = await api.community(platform_admin)
    foreign = await api.member(other_community["id"], platform_admin, with_login=False)
    LedgerMachine.harness = Harness(
        client=client,
        app=app,
        api=api,
        platform_admin=platform_admin,
        foreign_account_id=foreign.account_id,
    )
    try:
        await anyio.to_thread.run_sync(
            functools.partial(run_state_machine_as_test, LedgerMachine, settings=MACHINE_SETTINGS)
        )
    finally:
        LedgerMachine.harness = None

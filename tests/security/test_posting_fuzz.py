"""Hypothesis throws malformed amounts and ids at the posting routes: always a 4xx, books intact.

Amounts: floats (whole and fractional), NaN and the infinities (as the bare JSON literals that
Python's encoder writes), integers past 64 bits, booleans, numeric strings, nulls, lists and
objects. Ids: another community's account, unknown UUIDs, non-UUID text, numbers, nulls. Every
body holds at least one such value, so every answer must be a problem document with a 4xx
status, and the database must be exactly as it was (invariant 8). Valid sibling entries ride
along, so a refusal cannot hide behind an earlier, simpler one.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio.from_thread
import anyio.to_thread
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.conftest import World, snapshot

pytestmark = pytest.mark.anyio
T = TypeVar("T")

BAD_MINUTES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),  # 30.0 too: no float touches a balance
    st.sampled_from([30.0, -30.0, 1e308, -0.0, float("nan"), float("inf"), float("-inf")]),
    st.integers(min_value=2**53, max_value=2**200),
    st.integers(min_value=-(2**200), max_value=-(2**53)),
    st.booleans(),
    st.sampled_from(["30", "-30", "1e3", "0x1e", "thirty", "", " 30 ", "NaN"]),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip
GOOD_MINUTES = st.integers(min_value=-600, max_value=600).filter(bool)


def bad_ids(foreign: str) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(foreign),
        st.uuids().map(str),
        st.text(max_size=80),
        st.sampled_from(["0", "null", "' OR 1=1 --", "../" * 5, "%00", str(uuid.UUID(int=0))]),
        st.integers(),
        st.none(),
        st.booleans(),
    )


async def _await(coroutine: Coroutine[Any, Any, T]) -> T:
    return await coroutine


def on_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    return anyio.from_thread.run(_await, coroutine)


async def test_malformed_postings_are_refused_and_change_nothing(
    client: AsyncClient, app: FastAPI, world: World
) -> None:
    community = world.b["id"]
    headers = world.b_admin.headers
    good = [world.b_member.account_id, world.b_other.account_id]
    foreign = world.a_member.account_id
    before = await snapshot(app)
    before.pop("idempotency")

    entry_bad_minutes = st.fixed_dictionaries(
        {"account_id": st.sampled_from(good), "minutes": BAD_MINUTES}
    )
    entry_bad_account = st.fixed_dictionaries(
        {"account_id": bad_ids(foreign), "minutes": GOOD_MINUTES}
    )
    entry_good = st.fixed_dictionaries(
        {"account_id": st.sampled_from(good), "minutes": GOOD_MINUTES}
    )

    @st.composite
    def bodies(draw: st.DrawFn) -> tuple[str, str]:
        bad = draw(st.one_of(entry_bad_minutes, entry_bad_account))
        others = draw(st.lists(entry_good, max_size=3))
        entries = draw(st.permutations([bad, *others]))
        transaction: dict[str, Any] = {"entries": entries}
        if draw(st.booleans()):
            transaction["kind"] = draw(st.sampled_from(["transfer", "adjustment", "opening"]))
        if draw(st.booleans()):
            path = f"/v1/communities/{community}/transactions/batch"
            body: dict[str, Any] = {"atomic": True, "transactions": [transaction]}
        else:
            path = f"/v1/communities/{community}/transactions"
            body = transaction
        # allow_nan: NaN and Infinity go out as the bare literals a careless client sends.
        return path, json.dumps(body, allow_nan=True)

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(request=bodies())
    def attempt(request: tuple[str, str]) -> None:
        path, content = request
        response = on_loop(
            client.post(
                path,
                content=content,
                headers={
                    **headers,
                    "Content-Type": "application/json",
                    "Idempotency-Key": str(uuid.uuid4()),
                },
            )
        )
        assert 400 <= response.status_code < 500, f"{content}: {response.status_code}"
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == response.status_code
        assert problem["code"]

    await anyio.to_thread.run_sync(functools.partial(attempt))
    after = await snapshot(app)
    after.pop("idempotency")
    assert after == before

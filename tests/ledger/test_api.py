"""The ledger's HTTP behaviour: refusals as precise problem documents that change nothing,
limits, reversals, statements (JSON and CSV), transaction lists and visibility."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlalchemy import select, text, update

from app.core.clock import utcnow
from app.models import AccountLimitChange, IdempotencyRecord
from tests.factories import Api, expect
from tests.ledger.helpers import (
    balance,
    books_snapshot,
    check_books,
    open_books,
    partner_headers,
    post,
    refused,
)

pytestmark = pytest.mark.anyio

TEN_THOUSAND_HOURS = 600_000


def _entries(*lines: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"account_id": a, "minutes": m} for a, m in lines]


async def test_bad_input_is_refused_precisely_and_changes_nothing(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    books = await open_books(api, members=3, logins=False)
    foreign_community, foreign_admin = await api.community()
    foreign = await api.member(foreign_community["id"], foreign_admin, with_login=False)
    a, b, c = (m.account_id for m in books.members)
    await post(client, books.id, books.admin, [(a, 600), (b, -600)])
    url = f"/v1/communities/{books.id}/transactions"
    key_in_use = "key-in-use"
    expect(
        await client.post(
            url,
            json={"entries": _entries((a, 10), (c, -10))},
            headers={**books.admin.headers, "Idempotency-Key": key_in_use},
        ),
        201,
    )

    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("unbalanced", {"entries": _entries((a, 30), (b, -29))}, 422, "unbalanced"),
        ("one entry", {"entries": _entries((a, 30))}, 422, "too_few_entries"),
        ("no entries", {"entries": []}, 422, "validation_error"),
        ("zero", {"entries": _entries((a, 0), (b, 0))}, 422, "zero_amount"),
        ("zero among others", {"entries": _entries((a, 5), (b, -5), (c, 0))}, 422, "zero_amount"),
        ("fraction", {"entries": _entries((a, 1.5), (b, -1.5))}, 422, "validation_error"),
        ("float", {"entries": _entries((a, 30.0), (b, -30.0))}, 422, "validation_error"),
        ("string", {"entries": _entries((a, "30"), (b, "-30"))}, 422, "validation_error"),
        ("boolean", {"entries": _entries((a, True), (b, -1))}, 422, "validation_error"),
        (
            "over 10,000 hours",
            {"entries": _entries((a, TEN_THOUSAND_HOURS + 1), (b, -TEN_THOUSAND_HOURS - 1))},
            422,
            "validation_error",
        ),
        (
            "unknown account",
            {"entries": _entries((a, 30), (str(uuid.uuid4()), -30))},
            404,
            "account_not_found",
        ),
        ("not an id", {"entries": _entries((a, 30), ("abc", -30))}, 404, "account_not_found"),
        (
            "another community's account",
            {"entries": _entries((a, 30), (foreign.account_id, -30))},
            404,
            "account_not_found",
        ),
        ("duplicate account", {"entries": _entries((a, 30), (a, -30))}, 422, "duplicate_account"),
        # b is at -600 of -1200: 601 more is one minute too many.
        ("insufficient", {"entries": _entries((c, 601), (b, -601))}, 409, "insufficient_balance"),
        (
            "over the cap",
            {"entries": _entries((a, 100 * 60 - 600 + 1), (c, -(100 * 60 - 600 + 1)))},
            409,
            "over_balance_cap",
        ),
        (
            "a reversal is not posted directly",
            {"kind": "reversal", "entries": _entries((a, 30), (b, -30))},
            422,
            "validation_error",
        ),
        (
            "unknown field",
            {"entries": _entries((a, 3), (b, -3)), "hours": 1},
            422,
            "validation_error",
        ),
        (
            "date of service in the future",
            {
                "entries": _entries((a, 3), (b, -3)),
                "occurred_on": (datetime.now(UTC).date() + timedelta(days=2)).isoformat(),
            },
            422,
            "unprocessable",
        ),
    ]
    before = await books_snapshot(app)
    for name, body, status, code in cases:
        response = await client.post(
            url, json=body, headers={**books.admin.headers, "Idempotency-Key": str(uuid.uuid4())}
        )
        assert response.status_code == status, (name, response.text)
        problem = refused(response, status, code)
        assert problem["instance"] == url, name
        if code == "validation_error":
            assert problem["errors"], name
        if code in {"insufficient_balance", "over_balance_cap"}:
            assert {"account_id", "balance", "limit"} <= problem.keys(), name

    no_key = await client.post(
        url, json={"entries": _entries((a, 3), (b, -3))}, headers=books.admin.headers
    )
    refused(no_key, 400, "idempotency_key_required")
    reused = await client.post(
        url,
        json={"entries": _entries((a, 11), (c, -11))},
        headers={**books.admin.headers, "Idempotency-Key": key_in_use},
    )
    refused(reused, 422, "idempotency_key_reused")

    assert await books_snapshot(app) == before
    assert [await balance(client, x, books.admin) for x in (a, b, c)] == [610, -600, -10]
    await check_books(app, limits_unchanged=True)


async def test_a_balance_stranded_by_tighter_limits_may_only_move_back_toward_them(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    books = await open_books(api, members=3, logins=False)
    a, b, c = (m.account_id for m in books.members)
    await post(client, books.id, books.admin, [(a, 600), (b, -600)])

    read = expect(
        await client.patch(
            f"/v1/accounts/{a}",
            json={"max_balance": 300, "reason": "cap lowered by the board"},
            headers=books.admin.headers,
        ),
        200,
    )
    assert (read["balance"], read["max_balance"], read["max_balance_override"]) == (600, 300, 300)
    read = expect(
        await client.patch(
            f"/v1/accounts/{b}", json={"min_balance": -300}, headers=books.admin.headers
        ),
        200,
    )
    assert (read["balance"], read["min_balance"], read["available_to_spend"]) == (-600, -300, 0)

    # Further away from the range: refused, nothing changes.
    before = await books_snapshot(app)
    refused(
        await client.post(
            f"/v1/communities/{books.id}/transactions",
            json={"entries": _entries((a, 1), (c, -1))},
            headers={**books.admin.headers, "Idempotency-Key": str(uuid.uuid4())},
        ),
        409,
        "over_balance_cap",
    )
    refused(
        await client.post(
            f"/v1/communities/{books.id}/transactions",
            json={"entries": _entries((c, 1), (b, -1))},
            headers={**books.admin.headers, "Idempotency-Key": str(uuid.uuid4())},
        ),
        409,
        "insufficient_balance",
    )
    assert await books_snapshot(app) == before

    # Toward the range, even without reaching it: allowed.
    await post(client, books.id, books.admin, [(a, -100), (c, 100)])
    await post(client, books.id, books.admin, [(b, 100), (c, -100)])
    assert await balance(client, a, books.admin) == 500
    assert await balance(client, b, books.admin) == -500

    # null returns to the community default; every change is recorded.
    read = expect(
        await client.patch(
            f"/v1/accounts/{a}", json={"max_balance": None}, headers=books.admin.headers
        ),
        200,
    )
    assert (read["max_balance"], read["max_balance_override"]) == (100 * 60, None)
    async with app.state.sessionmaker() as session:
        changes = (
            await session.scalars(
                select(AccountLimitChange)
                .where(AccountLimitChange.account_id == uuid.UUID(a))
                .order_by(AccountLimitChange.changed_at)
            )
        ).all()
    assert [(x.old_max_balance, x.new_max_balance) for x in changes] == [(None, 300), (300, None)]
    assert changes[0].reason == "cap lowered by the board"
    assert str(changes[0].changed_by_user_id) == books.admin.user_id
    await check_books(app)


async def test_limit_changes_are_for_community_admins_only(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    books = await open_books(api, members=2)
    owner, other = books.members
    read_write = await partner_headers(
        client, books.id, books.admin, ["ledger:read", "ledger:write"]
    )
    other_books = await open_books(api, members=0)
    foreign_admin = await api.member(other_books.id, other_books.admin, role="admin")
    url = f"/v1/accounts/{owner.account_id}"
    body = {"min_balance": -6000}
    refused(await client.patch(url, json=body, headers=owner.headers), 403, "insufficient_role")
    refused(await client.patch(url, json=body, headers=other.headers), 403, "insufficient_role")
    refused(
        await client.patch(url, json=body, headers=books.coordinator.headers),
        403,
        "insufficient_role",
    )
    refused(await client.patch(url, json=body, headers=read_write), 403, "insufficient_scope")
    refused(
        await client.patch(url, json=body, headers=foreign_admin.headers),
        404,
        "account_not_found",
    )
    refused(
        await client.patch(url, json={"min_balance": 10}, headers=books.admin.headers),
        422,
        "validation_error",
    )
    refused(
        await client.patch(url, json={"max_balance": -1}, headers=books.admin.headers),
        422,
        "validation_error",
    )
    async with app.state.sessionmaker() as session:
        assert (await session.scalars(select(AccountLimitChange))).all() == []
    read = expect(await client.patch(url, json=body, headers=books.admin.headers), 200)
    assert read["min_balance"] == -6000
    assert read["available_to_spend"] == 6000


async def test_a_reversal_mirrors_the_original_once(client: AsyncClient, app: FastAPI) -> None:
    api = Api(client, app)
    books = await open_books(api, members=3, logins=False)
    a, b, c = (m.account_id for m in books.members)
    original = await post(
        client, books.id, books.admin, [(a, 90), (b, -60), (c, -30)], memo="Moving day"
    )
    url = f"/v1/transactions/{original['id']}/reversal"
    headers = {**books.admin.headers, "Idempotency-Key": "undo-moving-day"}

    first = await client.post(url, json={"memo": "Entered twice"}, headers=headers)
    reversal = expect(first, 201)
    assert reversal["kind"] == "reversal"
    assert reversal["reverses_id"] == original["id"]
    assert reversal["memo"] == "Entered twice"
    assert sorted((e["account_id"], e["minutes"]) for e in reversal["entries"]) == sorted(
        [(a, -90), (b, 60), (c, 30)]
    )
    assert [await balance(client, x, books.admin) for x in (a, b, c)] == [0, 0, 0]
    shown = expect(
        await client.get(f"/v1/transactions/{original['id']}", headers=books.admin.headers), 200
    )
    assert shown["reversed_by_id"] == reversal["id"]
    assert shown["entries"] == [
        {**e, "id": shown["entries"][i]["id"]} for i, e in enumerate(original["entries"])
    ]

    # A retry with the same key replays the first answer; without it, it is refused.
    before = await books_snapshot(app)
    again = await client.post(url, json={"memo": "Entered twice"}, headers=headers)
    assert again.status_code == 201
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.json() == reversal
    refused(
        await client.post(url, json={"memo": "Entered twice"}, headers=books.admin.headers),
        409,
        "already_reversed",
    )
    refused(
        await client.post(url, json={"memo": "Another reason"}, headers=headers),
        422,
        "idempotency_key_reused",
    )
    refused(
        await client.post(
            f"/v1/transactions/{reversal['id']}/reversal", headers=books.admin.headers
        ),
        409,
        "reversal_not_reversible",
    )
    refused(
        await client.post(f"/v1/transactions/{uuid.uuid4()}/reversal", headers=books.admin.headers),
        404,
        "transaction_not_found",
    )
    assert await books_snapshot(app) == before
    await check_books(app, limits_unchanged=True)


async def test_a_reversal_that_would_break_a_limit_is_refused(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    books = await open_books(api, members=3, logins=False)
    a, b, c = (m.account_id for m in books.members)
    original = await post(client, books.id, books.admin, [(a, 600), (b, -600)])
    await post(client, books.id, books.admin, [(c, 1800), (a, -1800)])  # a is now at -1200
    before = await books_snapshot(app)
    problem = refused(
        await client.post(
            f"/v1/transactions/{original['id']}/reversal", headers=books.admin.headers
        ),
        409,
        "insufficient_balance",
    )
    assert problem["account_id"] == a
    assert await books_snapshot(app) == before


async def _statement(
    client: AsyncClient, account_id: str, headers: dict[str, str], **params: Any
) -> dict[str, Any]:
    body: dict[str, Any] = expect(
        await client.get(f"/v1/accounts/{account_id}/entries", params=params, headers=headers),
        200,
    )
    return body


async def test_a_statement_pages_newest_first_and_answers_as_of_an_instant(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    books = await open_books(api, members=2)
    owner, other = books.members
    minutes = [30, -20, 45, -15, 60]
    for m in minutes:
        await post(client, books.id, books.admin, [(owner.account_id, m), (other.account_id, -m)])

    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await _statement(client, owner.account_id, owner.headers, **params)
        pages.append(page)
        cursor = page.get("next_cursor")
        if not cursor:
            break
    items = [item for page in pages for item in page["items"]]
    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    assert [i["minutes"] for i in items] == list(reversed(minutes))
    assert [i["account_version"] for i in items] == [5, 4, 3, 2, 1]
    running = [sum(minutes[: n + 1]) for n in range(len(minutes))]
    assert [i["balance_after"] for i in items] == list(reversed(running))
    assert all(p["balance"] == running[-1] for p in pages)
    assert items[0]["counterparties"] == [
        {
            "account_id": other.account_id,
            "name": other.member["display_name"],
            "member_id": other.member_id,
            "minutes": -60,
        }
    ]

    # as_of: the balance and the entries as they stood then (any offset is the same instant).
    third = items[2]
    instant = datetime.fromisoformat(third["posted_at"])
    in_berlin = instant.astimezone(timezone(timedelta(hours=2))).isoformat()
    then = await _statement(client, owner.account_id, owner.headers, as_of=in_berlin)
    expected_then = [i for i in items if datetime.fromisoformat(i["posted_at"]) <= instant]
    assert then["balance"] == expected_then[0]["balance_after"]
    assert [i["entry_id"] for i in then["items"]] == [i["entry_id"] for i in expected_then]
    before_all = datetime.fromisoformat(items[-1]["posted_at"]) - timedelta(seconds=1)
    empty = await _statement(client, owner.account_id, owner.headers, as_of=before_all.isoformat())
    assert (empty["balance"], empty["items"]) == (0, [])

    # from (inclusive) and to (exclusive).
    start = datetime.fromisoformat(items[3]["posted_at"])
    end = datetime.fromisoformat(items[1]["posted_at"])
    window = await _statement(
        client,
        owner.account_id,
        owner.headers,
        **{"from": start.isoformat(), "to": end.isoformat()},
    )
    expected_window = [
        i["entry_id"] for i in items if start <= datetime.fromisoformat(i["posted_at"]) < end
    ]
    assert [i["entry_id"] for i in window["items"]] == expected_window

    refused(
        await client.get(
            f"/v1/accounts/{owner.account_id}/entries",
            params={"cursor": "not-a-cursor"},
            headers=owner.headers,
        ),
        422,
        "invalid_cursor",
    )
    refused(
        await client.get(
            f"/v1/accounts/{owner.account_id}/entries",
            params={"as_of": "2026-01-01T00:00:00"},  # no offset: ambiguous
            headers=owner.headers,
        ),
        422,
        "validation_error",
    )


async def test_a_statement_downloads_as_csv_safe_for_spreadsheets(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    community, admin = await api.community()
    owner = await api.member(community["id"], admin)
    sneaky = await api.member(community["id"], admin, name="=HYPERLINK(1)")
    await post(
        client,
        community["id"],
        admin,
        [(owner.account_id, 90), (sneaky.account_id, -90)],
        memo='=cmd|"/c calc"!A1',
    )
    await post(
        client,
        community["id"],
        admin,
        [(owner.account_id, -30), (sneaky.account_id, 30)],
        memo="Tea, and a chat",
    )

    response = await client.get(
        f"/v1/accounts/{owner.account_id}/entries",
        headers={**owner.headers, "Accept": "text/csv"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == [
        "posted_at",
        "occurred_on",
        "transaction_id",
        "kind",
        "memo",
        "minutes",
        "balance_after",
        "counterparties",
    ]
    assert [(r[4], r[5], r[6]) for r in rows[1:]] == [
        ("Tea, and a chat", "-30", "60"),
        ('\'=cmd|"/c calc"!A1', "90", "90"),
    ]
    assert all(not cell.startswith(("=", "+", "-", "@")) for r in rows[1:] for cell in r[4::3])
    assert rows[1][7] == "'=HYPERLINK(1) (+30)"

    # The download holds nothing open: the books can be written straight away.
    await post(client, community["id"], admin, [(owner.account_id, 5), (sneaky.account_id, -5)])
    await check_books(app, limits_unchanged=True)


async def test_transactions_are_listed_newest_first_and_filtered(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    books = await open_books(api, members=3, logins=False)
    a, b, c = (m.account_id for m in books.members)
    today = datetime.now(UTC).date()
    first = await post(
        client,
        books.id,
        books.admin,
        [(a, 60), (b, -60)],
        occurred_on=(today - timedelta(days=20)).isoformat(),
    )
    second = await post(
        client,
        books.id,
        books.admin,
        [(b, 30), (c, -30)],
        kind="adjustment",
        occurred_on=(today - timedelta(days=10)).isoformat(),
    )
    third = await post(client, books.id, books.admin, [(c, 15), (a, -15)], kind="opening")
    reversal = expect(
        await client.post(f"/v1/transactions/{first['id']}/reversal", headers=books.admin.headers),
        201,
    )
    other_books = await open_books(api, members=2, logins=False)
    x, y = (m.account_id for m in other_books.members)
    await post(client, other_books.id, other_books.admin, [(x, 5), (y, -5)])

    async def listed(**params: Any) -> list[str]:
        page = expect(
            await client.get(
                f"/v1/communities/{books.id}/transactions",
                params=params,
                headers=books.coordinator.headers,
            ),
            200,
        )
        return [t["id"] for t in page["items"]]

    everything = [reversal["id"], third["id"], second["id"], first["id"]]
    assert await listed() == everything
    assert await listed(account_id=a) == [reversal["id"], third["id"], first["id"]]
    assert await listed(account_id=c) == [third["id"], second["id"]]
    assert await listed(account_id=x) == []
    assert await listed(account_id="not-an-id") == []
    assert await listed(kind="reversal") == [reversal["id"]]
    assert await listed(kind="adjustment") == [second["id"]]
    assert await listed(occurred_to=(today - timedelta(days=15)).isoformat()) == [first["id"]]
    assert await listed(
        occurred_from=(today - timedelta(days=15)).isoformat(),
        occurred_to=(today - timedelta(days=5)).isoformat(),
    ) == [second["id"]]
    posted = datetime.fromisoformat(second["posted_at"])
    assert await listed(**{"from": posted.isoformat()}) == [
        t for t in everything if t != first["id"]
    ]
    assert await listed(to=posted.isoformat()) == [first["id"]]
    refused(
        await client.get(
            f"/v1/communities/{books.id}/transactions",
            params={"kind": "gift"},
            headers=books.coordinator.headers,
        ),
        422,
        "validation_error",
    )

    page = expect(
        await client.get(
            f"/v1/communities/{books.id}/transactions",
            params={"limit": 3},
            headers=books.coordinator.headers,
        ),
        200,
    )
    assert [t["id"] for t in page["items"]] == everything[:3]
    rest = expect(
        await client.get(
            f"/v1/communities/{books.id}/transactions",
            params={"limit": 3, "cursor": page["next_cursor"]},
            headers=books.coordinator.headers,
        ),
        200,
    )
    assert [t["id"] for t in rest["items"]] == everything[3:]
    assert rest.get("next_cursor") is None
    listed_first = page["items"][0]
    assert listed_first["reverses_id"] == first["id"]
    assert len(listed_first["entries"]) == 2


async def test_a_transaction_is_visible_to_coordinators_and_the_members_it_touched(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    books = await open_books(api, members=3)
    payer, payee, bystander = books.members
    txn = await post(
        client, books.id, books.admin, [(payee.account_id, 40), (payer.account_id, -40)]
    )
    url = f"/v1/transactions/{txn['id']}"
    reader = await partner_headers(client, books.id, books.admin, ["ledger:read"])
    writer_only = await partner_headers(client, books.id, books.admin, ["ledger:write"])
    other_books = await open_books(api, members=1)
    other_admin = await api.member(other_books.id, other_books.admin, role="admin")
    outsider_partner = await partner_headers(
        client, other_books.id, other_books.admin, ["ledger:read"]
    )

    for headers in (
        books.coordinator.headers,
        books.admin.headers,
        payer.headers,
        payee.headers,
        reader,
    ):
        shown = expect(await client.get(url, headers=headers), 200)
        assert shown["id"] == txn["id"]
        assert {e["account_id"] for e in shown["entries"]} == {
            payer.account_id,
            payee.account_id,
        }
    for headers in (
        bystander.headers,
        other_admin.headers,
        other_books.coordinator.headers,
        other_books.members[0].headers,
        outsider_partner,
    ):
        refused(await client.get(url, headers=headers), 404, "transaction_not_found")
    refused(await client.get(url, headers=writer_only), 403, "insufficient_scope")
    refused(
        await client.get(f"/v1/transactions/{uuid.uuid4()}", headers=books.admin.headers),
        404,
        "transaction_not_found",
    )
    refused(
        await client.get("/v1/transactions/nonsense", headers=books.admin.headers),
        404,
        "transaction_not_found",
    )
    refused(await client.get(url), 401, "invalid_token")


async def test_an_atomic_batch_posts_everything_or_nothing(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    books = await open_books(api, members=3, logins=False)
    foreign_community, foreign_admin = await api.community()
    foreign = await api.member(foreign_community["id"], foreign_admin, with_login=False)
    a, b, c = (m.account_id for m in books.members)
    url = f"/v1/communities/{books.id}/transactions/batch"

    def batch(*items: list[dict[str, Any]], atomic: bool = True) -> dict[str, Any]:
        return {"atomic": atomic, "transactions": [{"entries": e} for e in items]}

    before = await books_snapshot(app)
    bad_items: list[tuple[list[dict[str, Any]], str]] = [
        (_entries((a, 10), (b, -9)), "unbalanced"),
        (_entries((a, 10), (str(uuid.uuid4()), -10)), "account_not_found"),
        (_entries((a, 10), ("nonsense", -10)), "account_not_found"),
        # Another community's account is, to these books, no account.
        (_entries((a, 10), (foreign.account_id, -10)), "account_not_found"),
        # Each item alone is fine; the second takes b past its limit after the first.
        (_entries((c, 1000), (b, -1000)), "insufficient_balance"),
    ]
    for bad, reason in bad_items:
        body = batch(_entries((a, 300), (b, -300)), bad, _entries((c, 5), (a, -5)))
        problem = refused(
            await client.post(
                url,
                json=body,
                headers={**books.admin.headers, "Idempotency-Key": str(uuid.uuid4())},
            ),
            422,
            "batch_refused",
        )
        assert (problem["index"], problem["reason"]) == (1, reason), problem
    assert await books_snapshot(app) == before

    result = expect(
        await client.post(
            url,
            json=batch(_entries((a, 300), (b, -300)), _entries((c, 5), (a, -5))),
            headers={**books.admin.headers, "Idempotency-Key": "batch-1"},
        ),
        200,
    )
    assert (result["atomic"], result["posted"], result["refused"]) == (True, 2, 0)
    assert [await balance(client, x, books.admin) for x in (a, b, c)] == [295, -300, 5]
    await check_books(app, limits_unchanged=True)


async def test_a_non_atomic_batch_reports_each_item(client: AsyncClient, app: FastAPI) -> None:
    api = Api(client, app)
    books = await open_books(api, members=3, logins=False)
    foreign_community, foreign_admin = await api.community()
    foreign = await api.member(foreign_community["id"], foreign_admin, with_login=False)
    a, b, c = (m.account_id for m in books.members)
    future = (datetime.now(UTC).date() + timedelta(days=3)).isoformat()
    body = {
        "atomic": False,
        "transactions": [
            {"entries": _entries((a, 300), (b, -300))},
            {"entries": _entries((a, 10), (b, -9))},
            {"entries": _entries((a, 10), (str(uuid.uuid4()), -10))},
            {"entries": _entries((c, 1000), (b, -1000))},
            {"entries": _entries((c, 60), (b, -60))},
            {"entries": _entries((a, 10), (b, -10)), "occurred_on": future},
            {"entries": _entries((a, 10), (a, -10))},
            {"entries": _entries((a, 10), (foreign.account_id, -10))},
        ],
    }
    url = f"/v1/communities/{books.id}/transactions/batch"
    headers = {**books.admin.headers, "Idempotency-Key": "non-atomic"}
    result = expect(await client.post(url, json=body, headers=headers), 200)
    assert (result["atomic"], result["posted"], result["refused"]) == (False, 2, 6)
    outcomes = [
        (r["index"], r["status"], (r["error"] or {}).get("code")) for r in result["results"]
    ]
    assert outcomes == [
        (0, "posted", None),
        (1, "refused", "unbalanced"),
        (2, "refused", "account_not_found"),
        (3, "refused", "insufficient_balance"),
        (4, "posted", None),
        (5, "refused", "unprocessable"),
        (6, "refused", "duplicate_account"),
        (7, "refused", "account_not_found"),
    ]
    assert result["results"][0]["transaction"]["entries"][0]["balance_after"] == 300
    assert [await balance(client, x, books.admin) for x in (a, b, c)] == [300, -360, 60]
    assert await balance(client, foreign.account_id, foreign_admin) == 0

    replay = await client.post(url, json=body, headers=headers)
    assert replay.status_code == 200
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert replay.json() == result
    assert [await balance(client, x, books.admin) for x in (a, b, c)] == [300, -360, 60]
    refused(
        await client.post(url, json=body, headers=books.admin.headers),
        400,
        "idempotency_key_required",
    )
    await check_books(app, limits_unchanged=True)


async def test_a_batch_takes_a_thousand_transactions_and_no_more(
    client: AsyncClient, app: FastAPI
) -> None:
    api = Api(client, app)
    books = await open_books(api, members=2, logins=False)
    a, b = (m.account_id for m in books.members)
    url = f"/v1/communities/{books.id}/transactions/batch"

    def batch(size: int) -> dict[str, Any]:
        # Alternate directions so no balance strays far.
        return {
            "atomic": True,
            "transactions": [
                {"entries": _entries((a, 1 if i % 2 else -1), (b, -1 if i % 2 else 1))}
                for i in range(size)
            ],
        }

    before = await books_snapshot(app)
    refused(
        await client.post(
            url, json=batch(1001), headers={**books.admin.headers, "Idempotency-Key": "too-many"}
        ),
        422,
        "validation_error",
    )
    assert await books_snapshot(app) == before

    result = expect(
        await client.post(
            url, json=batch(1000), headers={**books.admin.headers, "Idempotency-Key": "thousand"}
        ),
        200,
    )
    assert (result["posted"], result["refused"]) == (1000, 0)
    after = await books_snapshot(app)
    assert (after.transactions, after.entries) == (
        before.transactions + 1000,
        before.entries + 2000,
    )
    account = expect(await client.get(f"/v1/accounts/{a}", headers=books.admin.headers), 200)
    assert (account["balance"], account["version"]) == (0, 1000)
    assert (account["earned_total"], account["spent_total"]) == (500, 500)
    await check_books(app, limits_unchanged=True)


async def test_a_long_batch_is_still_all_or_nothing_and_keeps_its_chains_unbroken(
    client: AsyncClient, app: FastAPI
) -> None:
    """A refusal far into a long batch leaves nothing of what came before it, and a
    non-atomic batch with refusals scattered through it keeps every account's running balance
    and version unbroken."""
    api = Api(client, app)
    books = await open_books(api, members=3, logins=False)
    a, b, c = (m.account_id for m in books.members)
    url = f"/v1/communities/{books.id}/transactions/batch"
    size = 401
    late = size - 5
    over_limit = _entries((b, -590_000), (c, 590_000))

    def moved(i: int) -> int:  # alternating directions keep both balances near zero
        return (1 + i % 7) * (1 if i % 2 else -1)

    async def post_batch(refusals: tuple[int, ...], *, atomic: bool) -> Response:
        items = [{"entries": _entries((a, moved(i)), (b, -moved(i)))} for i in range(size)]
        for index in refusals:
            items[index] = {"entries": over_limit}
        return await client.post(
            url,
            json={"atomic": atomic, "transactions": items},
            headers={**books.admin.headers, "Idempotency-Key": str(uuid.uuid4())},
        )

    before = await books_snapshot(app)
    problem = refused(await post_batch((late,), atomic=True), 422, "batch_refused")
    assert (problem["index"], problem["reason"]) == (late, "insufficient_balance")
    assert await books_snapshot(app) == before

    refusals = (5, 128, 257, late)
    result = expect(await post_batch(refusals, atomic=False), 200)
    assert (result["posted"], result["refused"]) == (size - len(refusals), len(refusals))
    refused_at = [r["index"] for r in result["results"] if r["status"] == "refused"]
    assert refused_at == list(refusals)
    versions = [
        r["transaction"]["entries"][0]["account_version"]
        for r in result["results"]
        if r["status"] == "posted"
    ]
    assert versions == list(range(1, size - len(refusals) + 1))
    net = sum(moved(i) for i in range(size) if i not in refusals)
    assert [await balance(client, x, books.admin) for x in (a, b, c)] == [net, -net, 0]
    after = await books_snapshot(app)
    assert after.entries == before.entries + 2 * (size - len(refusals))
    await check_books(app, limits_unchanged=True)


async def test_stored_responses_are_compressed_with_lz4_on_postgresql(app: FastAPI) -> None:
    """A 1,000-item batch stores half a megabyte of response with its key, inside the posting's
    transaction: migration 0006 makes PostgreSQL compress it with lz4 rather than pglz."""
    if app.state.engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL column setting")
    async with app.state.engine.connect() as connection:
        method = await connection.scalar(
            text(
                "SELECT CAST(attcompression AS text) FROM pg_attribute"
                " WHERE attname = 'response_body'"
                " AND attrelid = CAST('idempotency_records' AS regclass)"
            )
        )
    assert method == "l"


async def test_a_retry_with_fields_and_details_in_another_order_replays(
    client: AsyncClient, app: FastAPI
) -> None:
    """The idempotency fingerprint is of what the request asks for, not of its bytes: a client
    library that orders keys differently on a retry gets the first answer, not a 422."""
    api = Api(client, app)
    books = await open_books(api, members=2, logins=False)
    a, b = (m.account_id for m in books.members)
    url = f"/v1/communities/{books.id}/transactions"
    headers = {**books.admin.headers, "Idempotency-Key": "ordered"}
    first = {
        "memo": "Shopping",
        "entries": _entries((a, 45), (b, -45)),
        "details": {"source": "app", "visit": {"day": "mon", "hours": [1, 2]}},
    }
    posted = expect(await client.post(url, json=first, headers=headers), 201)
    assert posted["details"] == {"source": "app", "visit": {"day": "mon", "hours": [1, 2]}}

    reordered = {
        "details": {"visit": {"hours": [1, 2], "day": "mon"}, "source": "app"},
        "entries": [{"minutes": 45, "account_id": a}, {"minutes": -45, "account_id": b}],
        "memo": "Shopping",
    }
    again = await client.post(url, json=reordered, headers=headers)
    assert again.status_code == 201
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.json() == posted
    assert [await balance(client, x, books.admin) for x in (a, b)] == [45, -45]

    # Order inside a list is meaning, not layout: it is a different request.
    swapped = {**first, "details": {"source": "app", "visit": {"day": "mon", "hours": [2, 1]}}}
    refused(await client.post(url, json=swapped, headers=headers), 422, "idempotency_key_reused")
    await check_books(app, limits_unchanged=True)


async def test_a_key_past_its_retention_may_be_used_afresh(
    client: AsyncClient, app: FastAPI
) -> None:
    """Keys are kept 48 hours; after that the same key names a new request, which posts."""
    api = Api(client, app)
    books = await open_books(api, members=2, logins=False)
    a, b = (m.account_id for m in books.members)
    url = f"/v1/communities/{books.id}/transactions"
    headers = {**books.admin.headers, "Idempotency-Key": "monthly-import"}
    first = expect(
        await client.post(url, json={"entries": _entries((a, 30), (b, -30))}, headers=headers), 201
    )
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(IdempotencyRecord).values(expires_at=utcnow() - timedelta(seconds=1))
        )

    again = await client.post(url, json={"entries": _entries((a, 45), (b, -45))}, headers=headers)
    second = expect(again, 201)
    assert "Idempotency-Replayed" not in again.headers
    assert second["id"] != first["id"]
    replay = await client.post(url, json={"entries": _entries((a, 45), (b, -45))}, headers=headers)
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert replay.json() == second
    assert [await balance(client, x, books.admin) for x in (a, b)] == [75, -75]
    await check_books(app, limits_unchanged=True)

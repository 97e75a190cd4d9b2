"""Matching an external record file against the ledger's exchanges: every outcome, every
malformed row named by line, both upload forms, CSV out, and the refusals."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response

from tests.factories import Actor, Api, expect, problem
from tests.reconciliation.helpers import reconcile, record_exchange

pytestmark = pytest.mark.anyio

D0 = date.today() - timedelta(days=2)
HEADER = "external_ref,date,provider,receiver,minutes,note"


def day(offset: int) -> str:
    return (D0 + timedelta(days=offset)).isoformat()


@dataclass
class World:
    admin: Actor
    a: Actor
    b: Actor
    c: Actor
    run_id: str
    exchanges: dict[str, dict[str, Any]]

    def url(self, tolerance: int | None = None) -> str:
        query = "" if tolerance is None else f"?tolerance_days={tolerance}"
        return f"/v1/admin/reconciliations/{self.run_id}/external-records{query}"


async def world(client: AsyncClient, app: FastAPI) -> World:
    api = Api(client, app)
    community, admin = await api.community()
    cid = community["id"]
    a = await api.member(cid, admin)  # has a login email
    b = await api.member(cid, admin, with_login=False)
    c = await api.member(cid, admin, with_login=False)
    plan = {
        "e1": (a, b, 60, 0),
        "e2": (b, c, 30, 0),
        "e3": (c, a, 45, -2),
        "e4": (a, c, 20, 0),
        "e5": (b, a, 15, -10),
        "e6": (c, b, 50, -8),
        "e7": (b, c, 10, -1),
    }
    exchanges = {
        name: await record_exchange(
            client, cid, admin, giver, taker, minutes, occurred_on=day(offset)
        )
        for name, (giver, taker, minutes, offset) in plan.items()
    }
    run = await reconcile(client, admin, community_id=cid)
    return World(admin, a, b, c, run["id"], exchanges)


def file_for(w: World) -> str:
    e = w.exchanges
    rows = [
        HEADER,
        f"{e['e1']['id']},{day(0)},{w.a.email},{w.b.member_id},60,by exchange id",  # line 2
        f"{e['e2']['transaction_id']},{day(1)},{w.b.member_id},{w.c.member_id},30,",  # 3
        f"GP-3,{day(0)},{w.c.member_id},{w.a.email.upper()},45,by content",  # 4
        f"GP-4,{day(0)},{w.a.member_id},{w.c.member_id},25,minutes differ",  # 5
        f"{e['e5']['id']},{day(0)},{w.b.member_id},{w.a.member_id},15,ten days out",  # 6
        f"GP-6,{day(0)},{w.c.member_id},{w.b.member_id},50,eight days out",  # 7
        f"GP-7,{day(0)},{w.a.member_id},{w.b.member_id},99,not in the ledger",  # 8
        f"GP-3,{day(-1)},{w.b.member_id},{w.a.member_id},5,same ref",  # 9
        f"GP-8,{day(0)},{w.a.member_id},{w.b.member_id},99,same content as line 8",  # 10
        f"GP-9,2026-13-01,{w.a.member_id},{w.b.member_id},30,bad date",  # 11
        f"GP-10,{day(0)},nobody@example.org,{w.b.member_id},30,unknown member",  # 12
        f"GP-11,{day(0)},{w.a.member_id},{w.b.member_id},0,zero",  # 13
        f"GP-12,{day(0)},{w.a.member_id},{w.b.member_id},abc,text",  # 14
        f"GP-13,{day(0)},{w.a.member_id},{w.b.member_id},30,note,extra cell",  # 15
    ]
    return "\n".join(rows) + "\n"


async def test_every_outcome_is_reported(client: AsyncClient, app: FastAPI) -> None:
    w = await world(client, app)
    e = w.exchanges
    body = expect(
        await client.post(
            w.url(),
            content=file_for(w).encode(),
            headers={**w.admin.headers, "Content-Type": "text/csv"},
        ),
        201,
    )
    result = body["result"]
    assert body["tolerance_days"] == 3
    assert body["summary"] == {
        "matched": 3,
        "amount_mismatches": 1,
        "date_mismatches": 2,
        "missing_from_ledger": 1,
        "missing_from_file": 1,
        "duplicates": 2,
        "malformed": 5,
    }

    def lines(kind: str) -> dict[int, dict[str, Any]]:
        return {item["record"]["line"]: item["ledger"] for item in result[kind]}

    matched = lines("matched")
    assert {line: m["exchange_id"] for line, m in matched.items()} == {
        2: e["e1"]["id"],  # reference: exchange id (provider given by login email)
        3: e["e2"]["id"],  # reference: transaction id, one day apart
        4: e["e3"]["id"],  # parties, minutes, date two days apart
    }
    [amount] = result["amount_mismatches"]
    assert amount["record"]["line"] == 5
    assert amount["ledger"]["exchange_id"] == e["e4"]["id"]
    assert (amount["record"]["minutes"], amount["ledger"]["minutes"]) == (25, 20)
    assert amount["differences"] == ["minutes"]
    dates = {item["record"]["line"]: item for item in result["date_mismatches"]}
    assert set(dates) == {6, 7}
    assert dates[6]["ledger"]["exchange_id"] == e["e5"]["id"]  # by reference, 10 days out
    assert dates[7]["ledger"]["exchange_id"] == e["e6"]["id"]  # by content, 8 days out
    assert all(item["differences"] == ["date"] for item in dates.values())
    assert [r["line"] for r in result["missing_from_ledger"]] == [8]
    assert [p["exchange_id"] for p in result["missing_from_file"]] == [e["e7"]["id"]]
    assert {(d["line"], d["duplicate_of_line"]) for d in result["duplicates"]} == {(9, 4), (10, 8)}
    malformed = {m["line"]: " ".join(m["problems"]) for m in result["malformed"]}
    assert set(malformed) == {11, 12, 13, 14, 15}
    assert "date '2026-13-01'" in malformed[11]
    assert "nobody@example.org" in malformed[12]
    assert "minutes '0'" in malformed[13]
    assert "minutes 'abc'" in malformed[14]
    assert "more cells" in malformed[15]

    # A wider tolerance turns both date mismatches into matches.
    wide = expect(
        await client.post(
            w.url(tolerance=10),
            content=file_for(w),
            headers={**w.admin.headers, "Content-Type": "text/csv; charset=utf-8"},
        ),
        201,
    )
    assert wide["tolerance_days"] == 10
    assert wide["summary"]["matched"] == 5
    assert wide["summary"]["date_mismatches"] == 0


async def test_multipart_upload_csv_output_and_refusals(client: AsyncClient, app: FastAPI) -> None:
    w = await world(client, app)
    e = w.exchanges
    content = "\n".join(
        [
            HEADER,
            f"{e['e1']['id']},{day(0)},{w.a.member_id},{w.b.member_id},60,",
            f"GP-4,{day(4)},{w.a.member_id},{w.c.member_id},20,=SUM(A1)",
            "GP-9,yesterday,x,y,1,",
        ]
    )
    uploaded = expect(
        await client.post(
            w.url(), files={"file": ("gp-log.csv", content, "text/csv")}, headers=w.admin.headers
        ),
        201,
    )
    assert uploaded["filename"] == "gp-log.csv"
    assert uploaded["summary"]["matched"] == 1
    assert uploaded["summary"]["date_mismatches"] == 1
    assert uploaded["summary"]["malformed"] == 1

    flat = await client.post(
        w.url(),
        files={"file": ("gp-log.csv", content, "text/csv")},
        headers={**w.admin.headers, "Accept": "text/csv"},
    )
    assert flat.status_code == 201
    assert flat.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(flat.text)))
    outcomes = {row["outcome"] for row in table}
    assert {"matched", "date_mismatches", "malformed", "missing_from_file"} <= outcomes
    assert next(r for r in table if r["outcome"] == "malformed")["line"] == "4"
    assert next(r for r in table if r["outcome"] == "date_mismatches")["detail"] == (
        "differs in date"
    )

    # Refusals.
    whole = await reconcile(client, w.admin)
    problem(
        await client.post(
            f"/v1/admin/reconciliations/{whole['id']}/external-records",
            content=content,
            headers={**w.admin.headers, "Content-Type": "text/csv"},
        ),
        422,
        "community_required",
    )
    problem(
        await client.post(w.url(), json={"rows": []}, headers=w.admin.headers),
        415,
        "unsupported_media_type",
    )
    problem(
        await client.post(
            w.url(),
            content=HEADER.encode() + b"\nGP-1,2026-01-01,\xff\xfe,x,1,\n",
            headers={**w.admin.headers, "Content-Type": "text/csv"},
        ),
        422,
        "external_file_invalid",
    )
    missing = problem(
        await client.post(
            w.url(),
            content="ref,date,minutes\nGP-1,2026-01-01,30\n",
            headers={**w.admin.headers, "Content-Type": "text/csv"},
        ),
        422,
        "external_file_invalid",
    )
    assert "external_ref" in missing["detail"]
    assert "provider" in missing["detail"]
    problem(
        await client.post(
            w.url(tolerance=61),
            content=content,
            headers={**w.admin.headers, "Content-Type": "text/csv"},
        ),
        422,
        "validation_error",
    )


async def test_a_file_the_csv_reader_cannot_read_is_refused_naming_the_line(
    client: AsyncClient, app: FastAPI
) -> None:
    """Carriage returns (a fuzzer's bare CR in an unquoted field was a 500): a CR line end is a
    line end, a row cut short in an open quote is a malformed row with its line, and a field
    over the csv module's size limit refuses the file naming the line. Never a 500."""
    w = await world(client, app)
    e = w.exchanges
    row = f"{e['e1']['id']},{day(0)},{w.a.member_id},{w.b.member_id},60,"

    async def upload(content: str) -> Response:
        return await client.post(
            w.url(), content=content, headers={**w.admin.headers, "Content-Type": "text/csv"}
        )

    with_cr = expect(await upload(f"{HEADER}\r{row}\r"), 201)
    assert with_cr["summary"]["matched"] == 1
    assert with_cr["summary"]["malformed"] == 0

    unterminated = expect(await upload(f'{HEADER}\n{row}\nGP-2,{day(0)},x,"y\r'), 201)
    assert [r["line"] for r in unterminated["result"]["malformed"]] == [3]

    too_long = f"GP-3,{day(0)},x,y,1,{'n' * 200_000}"
    refused = problem(await upload(f"{HEADER}\n{row}\n{too_long}\n"), 422, "external_file_invalid")
    assert "not valid CSV after line 2: field larger than field limit" in refused["detail"]
    header_refused = problem(
        await upload(f"{HEADER},{'h' * 200_000}\n{row}\n"), 422, "external_file_invalid"
    )
    assert "not valid CSV in its first line" in header_refused["detail"]

"""After a run: the books, read straight from the database, against what clients were told.

Every check appends a line to ``Verdict.failures`` instead of raising, so one run reports
everything it found.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.models import Entry, Exchange, ExchangeParty, Transaction
from app.models.ledger import IdempotencyRecord
from reliability._http import Connection, Unanswered
from reliability._workload import Recorder
from reliability._world import World, reconcile_cli
from tests.ledger.invariants import check_ledger_invariants

POSTED_STATUSES = ("confirmed", "disputed", "resolved")


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ledger_by_kind: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    lost: int = 0  # acknowledged but not in the ledger
    unacknowledged: int = 0  # in the ledger but never acknowledged

    def fail(self, message: str) -> None:
        self.failures.append(message)

    @property
    def ok(self) -> bool:
        return not self.failures


async def check_books(world: World, rec: Recorder, verdict: Verdict) -> None:
    """Invariants 1-5 and 7 in the database; acknowledged postings against the ledger;
    exchanges against their transactions; idempotency records against transactions."""
    engine = create_async_engine(world.url)
    community_id = uuid.UUID(world.community_id)
    try:
        async with AsyncSession(engine) as session:
            try:
                await check_ledger_invariants(
                    session, community_id=community_id, limits_unchanged=True
                )
            except AssertionError as exc:
                verdict.fail(f"ledger invariant broken: {exc}")
            await _check_acknowledged(session, community_id, rec, verdict)
            await _check_exchanges(session, community_id, verdict)
            await _check_idempotency_records(session, verdict)
            await _check_integer_amounts(session, verdict)
        if world.backend == "postgresql":
            await _check_append_only(engine, verdict)
    finally:
        await engine.dispose()


async def _check_acknowledged(
    session: AsyncSession, community_id: uuid.UUID, rec: Recorder, verdict: Verdict
) -> None:
    rows = (
        await session.execute(
            select(Transaction.id, Transaction.kind).where(Transaction.community_id == community_id)
        )
    ).all()
    in_ledger = {str(row.id): row.kind for row in rows}
    verdict.ledger_by_kind = Counter(in_ledger.values())
    acked = rec.acked_by_kind()
    verdict.acked = sum(acked.values())
    for kind in sorted(set(acked) | set(verdict.ledger_by_kind)):
        if acked[kind] != verdict.ledger_by_kind[kind]:
            verdict.fail(
                f"{kind}: {acked[kind]} acknowledged to clients, "
                f"{verdict.ledger_by_kind[kind]} in the ledger"
            )
    acked_ids = Counter(a.transaction_id for a in rec.acks.values())
    for transaction_id, n in acked_ids.items():
        if n > 1:
            verdict.fail(f"transaction {transaction_id} acknowledged under {n} different keys")
    lost = [t for t in acked_ids if t not in in_ledger]
    extra = [t for t in in_ledger if t not in acked_ids]
    verdict.lost = len(lost)
    verdict.unacknowledged = len(extra)
    for transaction_id in lost[:10]:
        verdict.fail(f"acknowledged transaction {transaction_id} is not in the ledger (lost)")
    for transaction_id in extra[:10]:
        verdict.fail(
            f"transaction {transaction_id} ({in_ledger[transaction_id]}) is in the ledger but "
            "no client was told of it"
        )
    for ack in rec.acks.values():
        stored = in_ledger.get(ack.transaction_id)
        if stored is not None and stored != ack.kind:
            verdict.fail(
                f"transaction {ack.transaction_id}: acknowledged as {ack.kind}, is {stored}"
            )


async def _check_exchanges(
    session: AsyncSession, community_id: uuid.UUID, verdict: Verdict
) -> None:
    """Every posted exchange has exactly one transaction (its own); none is half-done."""
    exchanges = list(
        await session.scalars(select(Exchange).where(Exchange.community_id == community_id))
    )
    exchange_transactions: dict[str, list[str]] = defaultdict(list)
    for row in await session.execute(
        select(Transaction.id, Transaction.details).where(
            Transaction.community_id == community_id, Transaction.kind == "exchange"
        )
    ):
        details = row.details if isinstance(row.details, dict) else json.loads(row.details)
        exchange_transactions[str(details.get("exchange_id"))].append(str(row.id))
    parties: dict[uuid.UUID, list[ExchangeParty]] = defaultdict(list)
    for party in await session.scalars(
        select(ExchangeParty)
        .join(Exchange, Exchange.id == ExchangeParty.exchange_id)
        .where(Exchange.community_id == community_id)
    ):
        parties[party.exchange_id].append(party)
    statuses: Counter[str] = Counter()
    stuck = 0
    for exchange in exchanges:
        statuses[exchange.status] += 1
        posted = exchange_transactions.pop(str(exchange.id), [])
        if exchange.status in POSTED_STATUSES:
            if exchange.transaction_id is None or posted != [str(exchange.transaction_id)]:
                verdict.fail(
                    f"exchange {exchange.id} ({exchange.status}) points at "
                    f"{exchange.transaction_id}; exchange transactions posted for it: {posted}"
                )
        elif posted or exchange.transaction_id is not None:
            verdict.fail(
                f"exchange {exchange.id} is {exchange.status} but has transactions {posted}"
            )
        if exchange.status == "proposed" and not exchange.needs_coordinator:
            own = parties[exchange.id]
            if own and all(p.confirmed_at is not None for p in own):
                stuck += 1
                if stuck <= 5:
                    verdict.fail(
                        f"exchange {exchange.id}: every party confirmed, yet it is still "
                        "proposed and nothing was posted (stuck)"
                    )
    for exchange_id, posted in exchange_transactions.items():
        verdict.fail(
            f"exchange transactions {posted} name no exchange of this community ({exchange_id})"
        )
    if stuck > 5:
        verdict.fail(f"{stuck} stuck exchanges in all")
    verdict.notes.append(
        "exchanges by status: " + ", ".join(f"{s} {n:,}" for s, n in sorted(statuses.items()))
    )


async def _check_idempotency_records(session: AsyncSession, verdict: Verdict) -> None:
    dangling = await session.scalar(
        select(func.count(IdempotencyRecord.id))
        .outerjoin(Transaction, Transaction.id == IdempotencyRecord.transaction_id)
        .where(IdempotencyRecord.transaction_id.is_not(None), Transaction.id.is_(None))
    )
    if dangling:
        verdict.fail(f"{dangling} idempotency records point at no transaction")


async def _check_integer_amounts(session: AsyncSession, verdict: Verdict) -> None:
    """Invariant 7 as stored: every amount and balance reads back as an int."""
    sample = (await session.execute(select(Entry.amount, Entry.balance_after).limit(1000))).all()
    if any(not isinstance(v, int) for row in sample for v in row):
        verdict.fail("an entry amount or balance is not an integer")


async def _check_append_only(engine: AsyncEngine, verdict: Verdict) -> None:
    """Invariant 5: PostgreSQL itself refuses UPDATE and DELETE on entries and transactions."""
    for statement in (
        "UPDATE entries SET amount = amount WHERE id = (SELECT min(id) FROM entries)",
        "DELETE FROM transactions WHERE id = (SELECT id FROM transactions LIMIT 1)",
    ):
        async with engine.connect() as conn:
            try:
                result = await conn.execute(text(statement))
            except DBAPIError:
                await conn.rollback()
                continue
            await conn.rollback()
            if getattr(result, "rowcount", 0):
                verdict.fail(f"the database allowed: {statement}")


async def check_replays(
    world: World, base_url: str, rec: Recorder, verdict: Verdict, sample: int = 30
) -> None:
    """Invariants 6 and 8 through the API after the load: a sample of acknowledged writes sent
    again replays the first answer and posts nothing; the same key with another body is
    refused (422) and changes nothing."""
    saved = [a for a in rec.acks.values() if a.sent is not None and a.sent.key]
    saved.sort(key=lambda a: a.transaction_id)
    chosen = saved[:: max(1, len(saved) // sample)][:sample]
    if not chosen:
        return
    before = await _ledger_size(world.url)
    host, port = base_url.removeprefix("http://").split(":")
    conn = Connection(host, int(port), timeout=30.0)
    replayed = refused = 0
    try:
        for ack in chosen:
            sent = ack.sent
            assert sent is not None
            try:
                reply = await conn.request(
                    sent.method, sent.path, token=sent.token, body=sent.body, key=sent.key
                )
            except Unanswered as exc:
                verdict.fail(f"replay of {sent.op}: no answer ({exc})")
                continue
            body = reply.json() if reply.status < 300 else {}
            posted = (
                body.get("transaction_id")
                if sent.op in {"confirm", "confirm_group", "record"}
                else body.get("id")
            )
            if not reply.replayed or posted != ack.transaction_id:
                verdict.fail(
                    f"replay of {sent.op} key={sent.key}: {reply.status} "
                    f"replayed={reply.replayed} transaction {posted} != {ack.transaction_id}"
                )
            else:
                replayed += 1
            other = _changed(json.loads(sent.body))
            try:
                reply = await conn.request(
                    sent.method,
                    sent.path,
                    token=sent.token,
                    body=json.dumps(other).encode(),
                    key=sent.key,
                )
            except Unanswered as exc:
                verdict.fail(f"reuse of key for {sent.op}: no answer ({exc})")
                continue
            if reply.status != 422 or reply.code != "idempotency_key_reused":
                verdict.fail(
                    f"reuse of key {sent.key} with another body for {sent.op}: "
                    f"{reply.status} {reply.code}"
                )
            else:
                refused += 1
    finally:
        await conn.close()
    after = await _ledger_size(world.url)
    if after != before:
        verdict.fail(f"replays changed the ledger: {before} -> {after} (transactions, entries)")
    verdict.notes.append(
        f"after the load: {replayed}/{len(chosen)} writes replayed their first answer, "
        f"{refused}/{len(chosen)} key reuses with another body refused (422), ledger unchanged"
    )


def _changed(body: dict[str, object]) -> dict[str, object]:
    """The same request with one valid field changed."""
    if isinstance(body.get("memo"), str):
        return {**body, "memo": f"{body['memo']} (changed)"}
    minutes = body.get("minutes")
    if isinstance(minutes, int):
        return {**body, "minutes": minutes + 1}
    if isinstance(body.get("description"), str):
        return {**body, "description": "changed"}
    return {**body, "note": "changed"}


async def _ledger_size(url: str) -> tuple[int, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            tx = await conn.scalar(select(func.count()).select_from(Transaction))
            en = await conn.scalar(select(func.count()).select_from(Entry))
            return int(tx or 0), int(en or 0)
    finally:
        await engine.dispose()


async def check_reconciliation(world: World, verdict: Verdict) -> None:
    code, output = await asyncio.to_thread(reconcile_cli, world.url)
    last = output.splitlines()[-1] if output else ""
    if code != 0:
        verdict.fail(f"timebank reconcile --seal exited {code}:\n{output[-3000:]}")
    else:
        verdict.notes.append(f"timebank reconcile --seal: exit 0 ({last.strip()})")


def check_clients(rec: Recorder, verdict: Verdict, *, faults: bool) -> None:
    """What clients saw: wrong answers always fail; 5xx and unanswered requests fail a soak
    (no faults), and are expected while faults are injected; an unresolved write fails both."""
    for problem in rec.problems[:20]:
        verdict.fail(f"client saw: {problem}")
    for item in rec.unresolved[:20]:
        verdict.fail(f"never answered despite retries: {item}")
    if not faults:
        if rec.server_errors:
            verdict.fail(f"clients saw {sum(rec.server_errors.values())} 5xx answers")
        if rec.unanswered:
            verdict.fail(f"{sum(rec.unanswered.values())} requests got no answer")


def print_verdict(rec: Recorder, verdict: Verdict) -> None:
    kinds = sorted(set(rec.acked_by_kind()) | set(verdict.ledger_by_kind))
    acked = rec.acked_by_kind()
    print("postings by kind:   acknowledged / in the ledger")
    for kind in kinds:
        print(f"  {kind:<16}{acked[kind]:>10,} / {verdict.ledger_by_kind[kind]:,}")
    print(
        f"postings acknowledged {verdict.acked:,}, in the ledger "
        f"{sum(verdict.ledger_by_kind.values()):,}: lost {verdict.lost}, "
        f"never acknowledged {verdict.unacknowledged}"
    )
    for note in verdict.notes:
        print(note)
    if verdict.ok:
        print("RESULT: PASS")
    else:
        print(f"RESULT: FAIL ({len(verdict.failures)} problem(s))")
        for failure in verdict.failures:
            print(f"  - {failure}")

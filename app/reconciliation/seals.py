"""Seals: tamper evidence for the ledger (see docs/seals.md).

A seal covers the entries with ``previous_high_water < id <= high_water``. Its digest is made
from blocks of BLOCK_SIZE canonical entry rows (each row carries its transaction's content
hash, so transaction edits show too), and each seal's ``chained_digest`` folds in the one
before it. A later run recomputes every sealed block: any row edited, deleted or inserted below
a sealed mark changes a block digest, and the first changed block is where the chain breaks.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.models import Entry, LedgerSeal, Transaction

BLOCK_SIZE = 10_000
GENESIS = "0" * 64
IN_FLIGHT_WAIT_SECONDS = 10.0


def canonical_entry(row: Any) -> bytes:
    return (
        f"{row.id}|{row.transaction_id}|{row.account_id}|{row.amount}|{row.balance_after}|"
        f"{row.account_version}|{row.content_hash}\n"
    ).encode()


def chain(previous_chained: str, digest: str, high_water: int) -> str:
    return hashlib.sha256(f"{previous_chained}|{digest}|{high_water}".encode()).hexdigest()


@dataclass
class SealSpan:
    """Digests of the entries in (low, high], computed block by block."""

    low: int
    high: int
    entry_count: int = 0
    block_digests: list[str] = field(default_factory=list)
    first_entry_of_block: list[int] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return hashlib.sha256("".join(self.block_digests).encode()).hexdigest()


# PostgreSQL digests the blocks itself: the same canonical rows (canonical_entry), joined in
# id order, block by block of BLOCK_SIZE rows, so only one row per block comes back.
_DIGEST_SQL = """
SELECT min(id) AS first_id, count(*) AS entries,
  encode(sha256(convert_to(string_agg(line, '' ORDER BY id), 'UTF8')), 'hex') AS digest
FROM (
  SELECT e.id, (row_number() OVER (ORDER BY e.id) - 1) / :block_size AS block,
    e.id::text || '|' || e.transaction_id::text || '|' || e.account_id::text || '|' ||
    e.amount::text || '|' || e.balance_after::text || '|' || e.account_version::text || '|' ||
    t.content_hash || chr(10) AS line
  FROM entries e JOIN transactions t ON t.id = e.transaction_id
  WHERE e.id > :low AND e.id <= :high
) AS rows
GROUP BY block
ORDER BY block
"""


async def digest_span(session: AsyncSession, low: int, high: int) -> SealSpan:
    """Digest the entries of (low, high] in id order, block by block."""
    if session.get_bind().dialect.name == "postgresql":
        span = SealSpan(low=low, high=high)
        if high <= low:
            return span
        rows = await session.execute(
            text(_DIGEST_SQL), {"block_size": BLOCK_SIZE, "low": low, "high": high}
        )
        for first_id, entries, digest in rows:
            span.first_entry_of_block.append(int(first_id))
            span.entry_count += int(entries)
            span.block_digests.append(digest)
        return span
    return await digest_span_in_python(session, low, high)


async def digest_span_in_python(session: AsyncSession, low: int, high: int) -> SealSpan:
    """The portable path: stream the entries in id order and digest them; memory stays flat."""
    span = SealSpan(low=low, high=high)
    if high <= low:
        return span
    stmt = (
        select(
            Entry.id,
            Entry.transaction_id,
            Entry.account_id,
            Entry.amount,
            Entry.balance_after,
            Entry.account_version,
            Transaction.content_hash,
        )
        .join(Transaction, Transaction.id == Entry.transaction_id)
        .where(Entry.id > low, Entry.id <= high)
        .order_by(Entry.id)
        .execution_options(yield_per=BLOCK_SIZE)
    )
    block = hashlib.sha256()
    in_block = 0
    async for partition in (await session.stream(stmt)).partitions():
        for row in partition:
            if in_block == 0:
                span.first_entry_of_block.append(row.id)
            block.update(canonical_entry(row))
            in_block += 1
            span.entry_count += 1
            if in_block == BLOCK_SIZE:
                span.block_digests.append(block.hexdigest())
                block = hashlib.sha256()
                in_block = 0
    if in_block:
        span.block_digests.append(block.hexdigest())
    return span


@dataclass
class TamperReport:
    seal_id: str
    high_water: int
    message: str
    first_bad_block: int | None
    entries_from: int | None
    expected: dict[str, Any]
    found: dict[str, Any]


async def verify_chain(session: AsyncSession) -> tuple[list[TamperReport], LedgerSeal | None, int]:
    """Recompute every seal; return tamper reports, the last seal, and entries verified."""
    seals = list(await session.scalars(select(LedgerSeal).order_by(LedgerSeal.high_water)))
    reports: list[TamperReport] = []
    previous_chained = GENESIS
    verified = 0
    for seal in seals:
        span = await digest_span(session, seal.previous_high_water, seal.high_water)
        verified += span.entry_count
        if span.digest != seal.digest or span.entry_count != seal.entry_count:
            first_bad = next(
                (
                    i
                    for i, (stored, found) in enumerate(
                        zip(seal.block_digests, span.block_digests, strict=False)
                    )
                    if stored != found
                ),
                min(len(seal.block_digests), len(span.block_digests)),
            )
            start = (
                span.first_entry_of_block[first_bad]
                if first_bad < len(span.first_entry_of_block)
                else None
            )
            reports.append(
                TamperReport(
                    seal_id=str(seal.id),
                    high_water=seal.high_water,
                    message=(
                        f"Sealed entries ({seal.previous_high_water}, {seal.high_water}] changed "
                        f"behind the service: the chain first breaks in block {first_bad}"
                        + (f", which starts at entry {start}." if start is not None else ".")
                    ),
                    first_bad_block=first_bad,
                    entries_from=start,
                    expected={"entry_count": seal.entry_count, "digest": seal.digest},
                    found={"entry_count": span.entry_count, "digest": span.digest},
                )
            )
        expected_chain = chain(previous_chained, seal.digest, seal.high_water)
        if expected_chain != seal.chained_digest:
            reports.append(
                TamperReport(
                    seal_id=str(seal.id),
                    high_water=seal.high_water,
                    message="The seal record itself was altered: its chained digest does not follow.",
                    first_bad_block=None,
                    entries_from=None,
                    expected={"chained_digest": expected_chain},
                    found={"chained_digest": seal.chained_digest},
                )
            )
        previous_chained = seal.chained_digest
    return reports, (seals[-1] if seals else None), verified


# Transactions (other than ours) that have begun an INSERT into entries and not yet ended. An
# INSERT takes its RowExclusiveLock on the table before it draws an id from the sequence and
# holds it to commit or rollback, so after the sequence is read, any id at or below it that is
# not yet committed belongs to one of these. (Unlike the snapshot's in-flight xids, this names
# only writers of entries in this database: a long transaction elsewhere does not hold sealing.)
_ENTRY_WRITERS = text(
    "SELECT DISTINCT virtualtransaction FROM pg_locks "
    "WHERE locktype = 'relation' AND relation = 'entries'::regclass "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND mode = 'RowExclusiveLock' AND pid <> pg_backend_pid()"
)
_STILL_RUNNING = text(
    "SELECT virtualxid FROM pg_locks WHERE locktype = 'virtualxid' "
    "AND virtualxid = ANY(CAST(:writers AS text[]))"
)


async def settled_high_water(connection: AsyncConnection) -> tuple[int, bool]:
    """The highest entry id below which no posting can still appear.

    PostgreSQL hands out ids when rows are inserted, but commits can land out of order: an
    entry with a lower id may still be in flight. So: read the sequence, note the transactions
    that are inserting entries at that moment, and wait (briefly) until each has committed or
    rolled back. After that every id up to the mark is final. SQLite has one writer, so its
    committed maximum is final already. Returns (mark, settled); when a writer stays in flight
    past the wait, the mark is not settled and the run seals nothing new (it never guesses).
    """
    if connection.dialect.name != "postgresql":
        mark = await connection.scalar(select(func.coalesce(func.max(Entry.id), 0)))
        await connection.commit()
        return int(mark or 0), True
    mark = int(
        await connection.scalar(
            text("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM entries_id_seq")
        )
        or 0
    )
    await connection.commit()
    writers = [str(x) for x in (await connection.execute(_ENTRY_WRITERS)).scalars()]
    await connection.commit()
    waited = 0.0
    while writers and waited < IN_FLIGHT_WAIT_SECONDS:
        writers = [
            str(x)
            for x in (await connection.execute(_STILL_RUNNING, {"writers": writers})).scalars()
        ]
        await connection.commit()
        if writers:
            await asyncio.sleep(0.01)
            waited += 0.01
    return mark, not writers


def new_seal(previous: LedgerSeal | None, span: SealSpan) -> LedgerSeal:
    digest = span.digest
    previous_chained = previous.chained_digest if previous else GENESIS
    return LedgerSeal(
        previous_seal_id=previous.id if previous else None,
        previous_high_water=span.low,
        high_water=span.high,
        entry_count=span.entry_count,
        block_digests=span.block_digests,
        digest=digest,
        chained_digest=chain(previous_chained, digest, span.high),
    )

"""Seals: tamper evidence for the ledger (see docs/seals.md).

A seal covers the entries with ``previous_high_water < id <= high_water``. Its digest is made
from blocks of BLOCK_SIZE canonical entry rows (each row carries its transaction's content
hash, so transaction edits show too), and each seal's ``chained_digest`` folds in the one
before it. A full verification recomputes every sealed block: any row edited, deleted or
inserted below a sealed mark changes a block digest, and the first changed block is where the
chain breaks.

On PostgreSQL a seal also carries a *census* of what its run saw, by row version (``xmin``):
the next run proves from it that no row that run saw was rewritten or deleted, and then
re-hashes only the rows written since (``Fresh``). Anything it cannot prove sends the run back
to a full verification.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import json
import operator
import re
import typing
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ARRAY, BigInteger, ColumnElement, Text, bindparam, cast, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.core.clock import utcnow
from app.models import Entry, LedgerSeal, Transaction

BLOCK_SIZE = 10_000
GENESIS = "0" * 64
IN_FLIGHT_WAIT_SECONDS = 10.0
# The run's snapshot, and each connection that shares it, sorts and hashes in memory.
SNAPSHOT_WORK_MEM = "128MB"

T = TypeVar("T")


def canonical_entry(row: Any) -> bytes:
    return (
        f"{row.id}|{row.transaction_id}|{row.account_id}|{row.amount}|{row.balance_after}|"
        f"{row.account_version}|{row.content_hash}\n"
    ).encode()


def chain(
    previous_chained: str, digest: str, high_water: int, census: dict[str, Any] | None = None
) -> str:
    """The chained digest; a seal's census (when it has one) is folded in, so editing the
    census is as visible as editing the digests themselves."""
    link = f"{previous_chained}|{digest}|{high_water}"
    if census is not None:
        link += "|" + hashlib.sha256(canonical_census(census)).hexdigest()
    return hashlib.sha256(link.encode()).hexdigest()


def canonical_census(census: dict[str, Any]) -> bytes:
    # JSONB reorders keys; sorted keys and fixed separators give the same bytes after a trip.
    return json.dumps(census, sort_keys=True, separators=(",", ":")).encode()


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


async def verify_chain(
    session: AsyncSession, fresh: Fresh | None = None
) -> tuple[list[TamperReport], LedgerSeal | None, int]:
    """Check every seal; return tamper reports, the last seal, and the entries vouched for.

    With ``fresh`` None, every sealed block is recomputed (a full verification). With a
    ``Fresh`` (the census held: no row the last sealing run saw was rewritten or deleted), only
    the blocks that hold a row written since, or an entry of a transaction written since, are
    recomputed; every other block is exactly as it was when it last verified. The chained
    digests are always checked, for every seal.
    """
    seals = list(await session.scalars(select(LedgerSeal).order_by(LedgerSeal.high_water)))
    reports: list[TamperReport] = []
    previous_chained = GENESIS
    verified = 0
    for seal in seals:
        if fresh is None:
            report = await _recompute_span(session, seal)
        else:
            report = await _recompute_suspect_blocks(session, seal, fresh.entry_ids_to_rehash)
        verified += seal.entry_count
        if report is not None:
            reports.append(report)
        expected_chain = chain(previous_chained, seal.digest, seal.high_water, seal.census)
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


def _broken(
    seal: LedgerSeal, first_bad: int, start: int | None, found: dict[str, Any]
) -> TamperReport:
    return TamperReport(
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
        found=found,
    )


async def _recompute_span(session: AsyncSession, seal: LedgerSeal) -> TamperReport | None:
    span = await digest_span(session, seal.previous_high_water, seal.high_water)
    if span.digest == seal.digest and span.entry_count == seal.entry_count:
        return None
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
        span.first_entry_of_block[first_bad] if first_bad < len(span.first_entry_of_block) else None
    )
    return _broken(seal, first_bad, start, {"entry_count": span.entry_count, "digest": span.digest})


async def _recompute_suspect_blocks(
    session: AsyncSession, seal: LedgerSeal, suspects: list[int]
) -> TamperReport | None:
    """Recompute the blocks of this seal that hold a suspect entry id (sorted ``suspects``)."""
    low, high = seal.previous_high_water, seal.high_water
    inside = suspects[bisect.bisect_right(suspects, low) : bisect.bisect_right(suspects, high)]
    if not inside:
        return None
    starts = (seal.census or {}).get("block_starts")
    if not starts or len(starts) != len(seal.block_digests):
        return await _recompute_span(session, seal)  # a seal from before block starts were kept
    for block in sorted({max(bisect.bisect_right(starts, i) - 1, 0) for i in inside}):
        block_low = low if block == 0 else starts[block] - 1
        block_high = starts[block + 1] - 1 if block + 1 < len(starts) else high
        span = await digest_span(session, block_low, block_high)
        if span.block_digests != [seal.block_digests[block]]:
            return _broken(
                seal,
                block,
                starts[block],
                {"block_entries": span.entry_count, "block_digests": span.block_digests},
            )
    return None


# --- Incremental verification (PostgreSQL): the census -------------------------------------
#
# A row is *fresh* relative to a reference xid P when its xmin follows P in PostgreSQL's
# circular xid order: (xmin - P) mod 2^32 < 2^31. It is a function of the raw 32-bit xmin and
# P alone (age() of each is taken from the same "now", which cancels), so a row's class never
# changes while it exists. PostgreSQL 15 keeps the raw xmin when it freezes a row (VACUUM
# FREEZE sets a flag; ``xmin`` still reads the original xid, checked by a test); the special
# xids 0-2 get age() = INT_MAX and are never fresh. Every row version written after a
# snapshot whose xmin is P has xid >= P, so it is fresh as long as fewer than 2^31 xids have
# passed since P: MAX_XID_DISTANCE keeps a wide margin below that.
MAX_XID_DISTANCE = 2**30
# Fresh rows listed in a census (normally the few postings that committed while the sealing
# run began); beyond this the census is not kept and the next run verifies in full.
CENSUS_LIST_LIMIT = 10_000
# Beyond this many fresh entries an incremental run saves little: verify in full.
FRESH_LIMIT = 100_000
# A full verification at least this often, whatever the census says: it also catches what
# the census cannot see (a data file edited outside PostgreSQL, keeping xmin). Deployments set
# it with TIMEBANK_RECONCILIATION_FULL_VERIFICATION_DAYS.
FULL_VERIFICATION_EVERY = timedelta(days=7)


def fresh_predicate(
    name: str, reference: int, end: int | None = None
) -> tuple[str, dict[str, bytes]]:
    """The predicate 'row r is fresh relative to the xid ``reference``' (rows are aliased r),
    with its parameters: (xmin - P) mod 2^32 < E - P, special xids (0-2) never fresh, where
    the window's end E is P + 2^31 unless given (a census window, see Window).

    xmin is compared as the four big-endian bytes ``xidsend()`` gives, which order like the
    unsigned xid; so the circular window [P, E) is one range, or two when it wraps.
    (``age()`` would do the arithmetic, but it is parallel restricted: a count with it cannot
    use a parallel scan. ``xidsend()`` is parallel safe and cheaper than a cast to text.)"""
    low = reference % 2**32
    high = (reference + 2**31 if end is None else end) % 2**32
    xid = "xidsend(r.xmin)"
    params = {
        f"{name}_low": max(low, 3).to_bytes(4, "big"),
        f"{name}_high": high.to_bytes(4, "big"),
    }
    if low < high:
        return f"({xid} >= :{name}_low AND {xid} < :{name}_high)", params
    return (
        f"({xid} >= :{name}_low OR ({xid} < :{name}_high AND {xid} >= '\\x00000003'::bytea))",
        params,
    )


# Up to this many xids between a census's reference and the run's snapshot, the census scan
# looks each row's xmin up in the set of those xids rather than comparing it with the window's
# bounds (xid_set_predicate).
XID_SET_LIMIT = 20_000


def xid_set_predicate(window: Window, horizon: int) -> str | None:
    """'row r is fresh to ``window``' as a look-up of its xmin in the set of the xids from the
    window's start up to ``horizon`` (the run's snapshot's xmax), where that says of every row
    the snapshot sees exactly what the window's range says (fresh_predicate); else None.

    It does when ``horizon`` <= the window's end <= 2^32 (64-bit xids). Every xid assigned so
    far is then below ``horizon`` <= 2^32: the cluster's xids have never wrapped, so a row's
    raw xmin is its xid (or a special xid, 0-2, fresh to neither), and the window's range does
    not wrap either. A row the snapshot sees was written by an xid below ``horizon``, so its
    xmin lies in [start, end) exactly when it lies in [start, horizon): the set. (A cluster
    past 2^32 xids, or a window that reaches past it, takes the range.)

    Why: xid has no ordering operators, so the range compares xidsend()'s bytes, a function
    call and an allocation for each row that were about half of the census scan's cost; a
    look-up in a hashed array (xid equality) costs a fraction of that. PostgreSQL hashes the
    array only when it is a constant when the statement is planned (a parameter in a generic
    plan is searched element by element, for every row), so the xids, integers made here, are
    printed into the statement, which _count prepares for this run alone."""
    start = max(window.start, 3)
    if not (start <= horizon <= window.end <= 2**32 and horizon - start <= XID_SET_LIMIT):
        return None
    if horizon == start:
        return "false"
    xids = [str(xid) for xid in range(start, horizon)]
    # PostgreSQL hashes an array of 9 elements or more (MIN_ARRAY_SIZE_FOR_HASHED_SAOP) and
    # searches a shorter one element by element, an equality call each, for every row: after
    # a few postings (6 xids) that took ~95 ms on the bench's 1,170,000 entries against ~75 ms
    # for the same xids repeated to 12, hashed (psql, one process, a WHERE of the xid set).
    # Repeating them leaves the set as it was.
    xids *= -(-HASHED_ARRAY_SIZE // len(xids))
    return f"r.xmin = ANY('{{{','.join(xids)}}}'::xid[])"


# (PostgreSQL's MIN_ARRAY_SIZE_FOR_HASHED_SAOP, since version 14.)
HASHED_ARRAY_SIZE = 9


@dataclass(frozen=True)
class Window:
    """The xids a census calls fresh: [start, end) in 64-bit xids, start its reference P and
    end - start between MAX_XID_DISTANCE and 2^31 (a census from before windows had ends:
    P + 2^31).

    A run keeps the end of the last census's window for its own census while at least
    MAX_XID_DISTANCE xids remain before it (``nested``), so its window lies inside the last
    one: a row fresh to this run is fresh to the last census too, and the census scan need
    not classify each row twice (see _count)."""

    start: int
    end: int

    @classmethod
    def of(cls, census: dict[str, Any]) -> Window:
        start = int(census["reference"])
        return cls(start, int(census.get("window_end", start + 2**31)))

    @classmethod
    def fresh_from(cls, reference: int) -> Window:
        return cls(reference, reference + 2**31)

    def next_from(self, reference: int) -> Window:
        """This run's window, from its own reference: inside this one while it can be."""
        if self.start <= reference and self.end - reference >= MAX_XID_DISTANCE:
            return Window(reference, self.end)
        return Window.fresh_from(reference)

    def holds(self, other: Window) -> bool:
        return self.start <= other.start and other.end <= self.end

    def predicate(self, name: str) -> tuple[str, dict[str, bytes]]:
        return fresh_predicate(name, self.start, self.end)


# Which cluster, database and tables the xids belong to: a restore, an upgrade or a failover
# to another cluster makes them meaningless (and rewrites every row), so the run goes full.
# So does a rewrite of a table in place (an ALTER TABLE that rewrites it, TRUNCATE and reload,
# VACUUM FULL, CLUSTER): it gives the table a new file, and may give every row a new xmin,
# which is a migration's doing, not a forger's. The full verification still checks every row.
_IDENTITY_COLUMNS = (
    "(SELECT system_identifier::text FROM pg_control_system()), "
    "(SELECT oid::bigint FROM pg_database WHERE datname = current_database()), "
    "'entries'::regclass::oid::bigint, 'transactions'::regclass::oid::bigint, "
    "pg_relation_filenode('entries')::bigint, pg_relation_filenode('transactions')::bigint"
)
_IDENTITY = text(f"SELECT {_IDENTITY_COLUMNS}")
# (The plan reads the identity with the snapshot's xmax, in one round trip.)
_IDENTITY_AND_HORIZON = text(
    f"SELECT {_IDENTITY_COLUMNS}, pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
)
# (census_reference reads the xids with whether it may see other roles' xids, in one.)
_REFERENCE_XIDS = text(
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
    "pg_snapshot_xmax(pg_current_snapshot())::text::bigint, "
    "pg_has_role('pg_read_all_stats', 'USAGE')"
)
# (The statements below are built from fresh_predicate and fixed names only.)
_CENSUS_TABLES = {
    "entries": "r.transaction_id, r.account_id, r.account_version, r.amount, r.balance_after",
    # (With the stored content hash and the fields it covers, as _PER_TRANSACTION_SQL in
    # checks prints them: the new fresh transactions are checked from these rows.)
    "transactions": "r.kind, r.reverses_id, r.content_hash, concat_ws(chr(31), r.id::text, "
    "r.community_id::text, r.kind, to_char(r.occurred_on, 'YYYY-MM-DD'), "
    "coalesce(r.reverses_id::text, ''), r.memo) AS head",
}
# The rows the plan reads (_CANDIDATES, _CANDIDATES_IN_RANGE, _FRESH_ROWS) have these columns,
# in this order: the id, the table's columns above, then whether the row is fresh to the last
# census (fresh) and to this run's reference (fresh_now). The loops over them (thousands of
# rows) read them by position: a driver record's field read by name costs a look-up of the
# name each time, several times what reading it by position or unpacking the row costs (the
# plan's bookkeeping, the new transactions' hashes: 5.8 -> 4.3 ms, 13.4 -> 10.4 ms on the
# bench's rows, alone).
ENTRY_COLUMNS = (
    "id",
    "transaction_id",
    "account_id",
    "account_version",
    "amount",
    "balance_after",
    "fresh",
    "fresh_now",
)
TRANSACTION_COLUMNS = ("id", "kind", "reverses_id", "content_hash", "head", "fresh", "fresh_now")
# (fresh and fresh_now are the last two columns of either table's rows.)
FRESH, FRESH_NOW = -2, -1
# One scan per table, each on a connection of its own (_count_beside), counts every row and
# the fresh ones (to either reference; to the last census's alone when this run's window lies
# inside its window, "nested").
_COUNTS = {
    "entries": "SELECT count(*), count(*) FILTER (WHERE {fresh}), {fresh_now_count}, NULL "
    "FROM entries r",
    "transactions": "SELECT count(*), count(*) FILTER (WHERE {fresh}), {fresh_now_count}, "
    "{exchanges_count} FROM transactions r",
}
# The same counts when the scan classifies each row to one window only (nested, and no
# exchange transactions to count), asked of the executor rather than of an aggregate: a
# sequential scan with the predicate as its filter returns the fresh rows and removes the
# others, and EXPLAIN ANALYZE reports both numbers for the scan node (``Actual Rows``, ``Rows
# Removed by Filter``; every row the snapshot sees is one or the other). The rows are not
# passed up to an aggregate one by one, which cost as much as classifying them (see _count).
_FILTERED_COUNT = (
    "EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF, SUMMARY OFF, FORMAT JSON) "
    "SELECT FROM {table} r WHERE {fresh}"
)
# Where fresh rows are expected, reached through indexes: entries above the last seal's mark,
# the rows the census listed, and the transactions of the fresh entries. When the counts say
# that is all of them (as it is unless rows were added or rewritten behind the service), the
# fresh rows need no second scan; otherwise _FRESH_ROWS finds them by the predicate.
_CANDIDATES = {
    "entries": "SELECT r.id, {columns}, {fresh} AS fresh, {fresh_now} AS fresh_now "
    "FROM entries r WHERE r.id > :high OR r.id = ANY(CAST(:ids AS bigint[])) LIMIT :limit",
    # (Each id through the primary key: a long = ANY(array) filter scans the table instead.)
    "transactions": "SELECT r.* FROM unnest(CAST(:ids AS uuid[])) AS t(id) CROSS JOIN LATERAL "
    "(SELECT r.id, {columns}, {fresh} AS fresh, {fresh_now} AS fresh_now "
    "FROM transactions r WHERE r.id = t.id OFFSET 0) AS r LIMIT :limit",
}
# The same transaction rows as _CANDIDATES by one range of the primary key, from the least id
# looked for to the greatest (_by_id_range): ids are UUIDv7 (app.core.ids), which grow with
# time, so the transactions written since the last seal lie together at the end of the index.
_CANDIDATES_IN_RANGE = (
    "SELECT r.id, {columns}, {fresh} AS fresh, {fresh_now} AS fresh_now "
    "FROM transactions r WHERE r.id >= CAST(:low AS uuid) AND r.id <= CAST(:high AS uuid) "
    "LIMIT :limit"
)
_FRESH_ROWS = (
    "SELECT r.id, {columns}, {fresh} AS fresh, {fresh_now} AS fresh_now "
    "FROM {table} r WHERE {fresh} OR {fresh_now} LIMIT :limit"
)
_ENTRIES_OF = text(
    "SELECT e.id FROM unnest(CAST(:ids AS uuid[])) AS t(id) CROSS JOIN LATERAL "
    "(SELECT id FROM entries WHERE transaction_id = t.id OFFSET 0) AS e"
)


async def _identity(session: AsyncSession) -> dict[str, str]:
    return _identity_of((await session.execute(_IDENTITY)).one())


def _identity_of(row: Sequence[Any]) -> dict[str, str]:
    system, database, entries, transactions, entries_file, transactions_file = row[:6]
    return {
        "system": str(system),
        "database": str(database),
        "entries": str(entries),
        "transactions": str(transactions),
        "entries_file": str(entries_file),
        "transactions_file": str(transactions_file),
    }


# Transactions of this database that hold an xid (they may write), prepared ones included.
_WRITERS_HERE = text(
    "SELECT backend_xid::text::bigint FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_xid IS NOT NULL "
    "UNION ALL SELECT transaction::text::bigint FROM pg_prepared_xacts "
    "WHERE database = current_database()"
)


async def census_reference(connection: AsyncConnection) -> int | None:
    """The census reference P (a 64-bit xid), read just *before* the run's snapshot is taken.

    Every row version the snapshot will not see, and that can later appear in this database,
    must have xid >= P: it belongs either to a transaction of this database that holds an xid
    now (so P is at most the least of those) or to one that gets its xid later (at or above
    the current snapshot's xmax, the latest completed xid + 1, so P is at most that). The
    snapshot's own xmin would do too, but it is cluster-wide: a long transaction in another
    database would make every recent row look fresh.
    """
    if connection.dialect.name != "postgresql":
        return None
    oldest, next_xid, sees_all = (await connection.execute(_REFERENCE_XIDS)).one()
    oldest, next_xid = int(oldest), int(next_xid)
    if not sees_all:
        # Other roles' xids are hidden from us in pg_stat_activity: take the cluster-wide one.
        await connection.commit()
        return oldest
    writers = [int(x) for x in (await connection.execute(_WRITERS_HERE)).scalars()]
    await connection.commit()
    # Those xids are running, so within 2^31 of next_xid (some may be above it: assigned but
    # not completed, or assigned since; they change nothing): widen each to 64 bits from it.
    return min([next_xid, *(next_xid + ((x - next_xid + 2**31) % 2**32) - 2**31 for x in writers)])


async def take_census(
    session: AsyncSession,
    span: SealSpan,
    reference: int,
    full_verified_at: datetime | None,
    seed: CensusSeed | None = None,
    fresh: Fresh | None = None,
) -> tuple[dict[str, Any] | None, AccountTotals | None]:
    """What this run's snapshot holds, by row version, for the seal it is about to make:
    rows older than ``reference`` (census_reference) are counted, the few fresher ones listed
    by id; and each account's figures over the old entries (the seal's account totals; their
    digest goes in the census). An incremental run has counted and
    classified the rows already (``seed``), and its account pass made the figures from the
    last seal's totals (``fresh``)."""
    if session.get_bind().dialect.name != "postgresql":
        return None, None
    if seed is None:
        window = Window.fresh_from(reference)
        seed = await _census_seed(session, window, window, CENSUS_LIST_LIMIT + 1)
    census: dict[str, Any] = {
        "reference": reference,
        "window_end": seed.window_now.end,
        "identity": await _identity(session),
        "block_starts": span.first_entry_of_block,
        "full_verified_at": (full_verified_at or utcnow()).isoformat(),
    }
    for table in ("entries", "transactions"):
        listed = seed.fresh_now[table]
        if len(listed) > CENSUS_LIST_LIMIT:
            return None, None
        counted = seed.counts.totals[table] if seed.counts is not None else 0
        census[table] = {"before": counted - len(listed), "fresh": sorted(listed)}
    if seed.old_exchange_transactions is not None:
        census["transactions"]["exchanges"] = seed.old_exchange_transactions
    made = session.info.get("account_totals")  # by the checks' account pass, incrementally
    if made is not None and made[0] is fresh:
        account_totals = made[1]
    else:
        fresh_now = [int(e[0]) for e in seed.entries if e[FRESH_NOW]]  # the others: old
        statement = _new_totals_sql(fresh_now)
        row = (await session.execute(text(statement), {"fresh_now": fresh_now})).one()
        account_totals = AccountTotals.of(row)
    census["totals_digest"] = account_totals.digest
    return census, account_totals


# Each account's [entries, total, earned, spent] (docs/seals.md, "Account totals"). In full, by
# the account ids the entries name (whether or not the account row exists), as the checks'
# account pass sums them; incrementally, the last seal's totals plus the fresh entries.
_FIGURES = (  # (spent is earned less the total: one aggregate fewer over every entry)
    "SELECT account_id, n, t, earned, earned - t AS spent FROM ("
    "SELECT account_id, count(*) AS n, CAST(sum(amount) AS bigint) AS t, "
    "CAST(coalesce(sum(amount) FILTER (WHERE amount > 0), 0) AS bigint) AS earned "
    "FROM {entries} "
    "GROUP BY account_id) AS g"
)
_ENTRIES_BY_ID = (
    "(SELECT e.* FROM unnest(CAST(:{ids} AS bigint[])) AS f(id) CROSS JOIN LATERAL "
    "(SELECT account_id, amount FROM entries WHERE id = f.id OFFSET 0) AS e) AS e"
)
# (The four arrays unnested side by side in the select list, which steps through them
# together as unnest(a, b, c, d) does, NULLs past the end of a shorter one, but without
# storing each array's rows first as that function scan does: 4.6 -> 1.2 ms at 10,000
# accounts, the account pass 46 -> 40 ms.)
SEAL_TOTALS = (
    "SELECT account_id, n, t, earned, earned - t AS spent FROM (SELECT "
    "unnest(s.totals_accounts) AS account_id, unnest(s.totals_entries) AS n, "
    "unnest(s.totals_balances) AS t, unnest(s.totals_earned) AS earned "
    "FROM ledger_seals s WHERE s.id = CAST(:seal AS uuid)) AS o"
)


# The new seal's totals, over the entries its census counts as old: every entry's figures
# less those of the fresh ones, as four aligned arrays (account ids, entries, balances,
# earned; spent is earned less the balance, as the full pass has it), built and digested by
# PostgreSQL: the digest is sha256 over the arrays' binary form (array_send), taken the same
# way from what is stored (TOTALS_DIGEST). The order of the accounts is whatever the one
# aggregation gave: the digest is of the arrays as stored, so it needs none in particular.
_KEPT_LESS_GONE = (
    "gone AS (" + _FIGURES.format(entries=_ENTRIES_BY_ID.format(ids="fresh_now")) + "), "  # noqa: S608
    # (A sum over both rather than a join: no plan can make it quadratic. bigint sums: a sum
    # of numerics costs several times as much.)
    "kept AS (SELECT account_id, CAST(sum(n) AS bigint) AS n, CAST(sum(t) AS bigint) AS t, "
    "CAST(sum(earned) AS bigint) AS earned, CAST(sum(spent) AS bigint) AS spent "
    "FROM (SELECT * FROM figures UNION ALL "
    "SELECT account_id, -n, -t, -earned, -spent FROM gone) AS both_ GROUP BY account_id), "
)
# (Usually no entry is fresh to the run's own reference: then every entry's figures are kept.)
_KEPT_ALL = "kept AS (SELECT * FROM figures), "
_TOTALS = (
    "totals AS (SELECT coalesce(array_agg(account_id), '{}') AS accounts, "
    "coalesce(array_agg(n), '{}') AS entries, coalesce(array_agg(t), '{}') AS balances, "
    "coalesce(array_agg(earned), '{}') AS earned "
    "FROM kept WHERE n <> 0 OR t <> 0 OR earned <> 0 OR spent <> 0)"
)


def totals_ctes(fresh_now: list[int]) -> str:
    """The CTEs gone (unless ``fresh_now`` is empty), kept and totals, from a CTE figures;
    parameter ``fresh_now``: the ids of the entries fresh to this run's reference."""
    return (_KEPT_LESS_GONE if fresh_now else _KEPT_ALL) + _TOTALS


_TOTALS_DIGEST = (
    "encode(sha256(array_send({p}accounts) || array_send({p}entries) || "
    "array_send({p}balances) || array_send({p}earned)), 'hex')"
)
# (The account ids come back as an array, the figures printed as text: the run only passes
# them on to the seal's INSERT (AccountTotals.store_with), and 30,000 integers as three
# strings cost a fraction of what the driver takes to decode and encode them one by one:
# storing the totals 15 ms -> 5 ms.
# An integer's text is exact, and the digest is of the arrays themselves.)
TOTALS_COLUMNS = (
    "accounts AS totals_accounts, CAST(entries AS text) AS totals_entries, "
    "CAST(balances AS text) AS totals_balances, CAST(earned AS text) AS totals_earned, "
    + _TOTALS_DIGEST.format(p="")
    + " AS digest"
)


# (An incremental run's account pass: when its totals name the same accounts in the same order
# as the last seal's (parameter seal), as they do unless an account has its first entries
# since (the accounts come out of a join in the order of the last seal's, any new ones last),
# the ids do not come back (NULL): the new seal's INSERT copies them from the last seal's row
# (AccountTotals.store_with), where the run's snapshot read them. The digest is of the ids the
# statement made, equal to those. 10,000 ids decoded and encoded one by one by the driver, and
# received again by PostgreSQL, cost ~5 ms of Python at the end of every sealing run.)
TOTALS_COLUMNS_AFTER_SEAL = TOTALS_COLUMNS.replace(
    "accounts AS totals_accounts",
    "CASE WHEN accounts = (SELECT totals_accounts FROM ledger_seals "
    "WHERE id = CAST(:seal AS uuid)) THEN NULL ELSE accounts END AS totals_accounts",
    1,
)


def _new_totals_sql(fresh_now: list[int]) -> str:
    """The new seal's totals summed from every entry (an incremental run's account pass has
    made them from the last seal's totals already)."""
    return (
        f"WITH figures AS ({_FIGURES.format(entries='entries')}), {totals_ctes(fresh_now)} "  # noqa: S608
        f"SELECT {TOTALS_COLUMNS} FROM totals"
    )


@dataclass
class AccountTotals:
    """A seal's account totals as made by TOTALS_COLUMNS (or TOTALS_COLUMNS_AFTER_SEAL), and
    their digest."""

    # None: the same ids as the totals of the seal ``same_accounts_as``.
    accounts: list[uuid.UUID] | None
    # The figures as PostgreSQL prints a bigint[] ('{1,2,3}'), stored as they came.
    entries: str
    balances: str
    earned: str
    digest: str
    same_accounts_as: uuid.UUID | None = None

    @classmethod
    def of(cls, row: Any, last_seal: uuid.UUID | None = None) -> AccountTotals:
        """The totals in ``row``; ``last_seal``: the seal whose account ids a row made by
        TOTALS_COLUMNS_AFTER_SEAL leaves out when they are the same."""
        accounts = row.totals_accounts
        if accounts is None and last_seal is None:
            raise ValueError("account totals without their accounts")
        return cls(
            accounts,
            row.totals_entries,
            row.totals_balances,
            row.totals_earned,
            row.digest,
            None if accounts is not None else last_seal,
        )

    def store_with(self, seal: LedgerSeal) -> None:
        """Have the seal's INSERT store these totals: the figures cast from their text by
        PostgreSQL, as they came. (Until late in session 6 an UPDATE stored them after the INSERT: a
        second statement, and a second version of the row and its arrays.)"""
        if self.accounts is not None:
            seal.totals_accounts = self.accounts
        else:  # (the last seal's ids, copied by the INSERT: the same, as its statement found)
            seal.totals_accounts = typing.cast(
                list[uuid.UUID],
                select(LedgerSeal.totals_accounts)
                .where(LedgerSeal.id == self.same_accounts_as)
                .scalar_subquery(),
            )
        seal.totals_entries = typing.cast(list[int], _figures(self.entries))
        seal.totals_balances = typing.cast(list[int], _figures(self.balances))
        seal.totals_earned = typing.cast(list[int], _figures(self.earned))


def _figures(printed: str) -> ColumnElement[Any]:
    """A bigint[] from its text ('{1,2,3}'), cast by PostgreSQL."""
    return cast(cast(bindparam(None, printed, type_=Text), Text), ARRAY(BigInteger))


TOTALS_DIGEST = text(
    "SELECT " + _TOTALS_DIGEST.format(p="totals_") + " FROM ledger_seals "  # noqa: S608
    "WHERE id = :id AND totals_accounts IS NOT NULL AND totals_entries IS NOT NULL "
    "AND totals_balances IS NOT NULL AND totals_earned IS NOT NULL"
)


@dataclass
class CensusSeed:
    """The rows fresh to either reference, fetched in one snapshot, and what was counted."""

    counts: Counts | None  # None while being counted beside (_count_beside)
    # Driver rows (read by name): id, transaction_id, account_id, account_version, amount,
    # balance_after, fresh, fresh_now
    entries: list[Any]
    # id, kind, reverses_id, content_hash, head (what the hash covers but the lines), fresh,
    # fresh_now
    transactions: list[Any]
    # The window of this run's own census (fresh_now is fresh to it).
    window_now: Window
    # The ids of old rows found beside the fresh transactions (the same id twice: a copy), or
    # None when the fresh rows were found by the predicate, so no old copies were looked for.
    old_transaction_ids: set[Any] | None = None
    # Transaction rows of kind exchange: counted with the rows (a full run), or the last
    # census's old ones plus the fresh ones (_decide); None when neither is known.
    exchange_transactions: int | None = None
    # Every row the look-ups where the last census expects fresh rows returned, fresh or not
    # (None when the fresh rows were found by the predicate): the new span is digested from
    # them (span_from_rows).
    read: RowsRead | None = None

    @property
    def old_exchange_transactions(self) -> int | None:
        """Transaction rows of kind exchange that this run's census counts as old."""
        if self.exchange_transactions is None:
            return None
        fresh_now = sum(1 for r in self.transactions if r[FRESH_NOW] and r[1] == "exchange")
        return self.exchange_transactions - fresh_now

    @functools.cached_property
    def fresh_now(self) -> dict[str, list[str]]:
        return {
            "entries": [str(r[0]) for r in self.entries if r[FRESH_NOW]],
            "transactions": [str(r[0]) for r in self.transactions if r[FRESH_NOW]],
        }


_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


async def _fetch(session: AsyncSession, statement: str, params: dict[str, Any]) -> list[Any]:
    """Rows straight from the driver (asyncpg records, read by position: ENTRY_COLUMNS), in the
    session's transaction: for the thousands of fresh rows, SQLAlchemy's result rows cost
    more than the query itself. ``:name`` parameters become asyncpg's ``$n``."""
    numbered, values = driver_parameters(statement, params)
    raw = await (await session.connection()).get_raw_connection()
    driver: Any = raw.driver_connection
    rows: list[Any] = await driver.fetch(numbered, *values)
    return rows


def driver_parameters(statement: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """``statement`` with its ``:name`` parameters as asyncpg's ``$n``, and their values."""
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${names.setdefault(match.group(1), len(names) + 1)}"

    numbered = _PARAMETER.sub(number, statement)
    return numbered, [params[n] for n in names]


@dataclass
class Expected:
    """Where the last census expects fresh rows: entries above its seal's mark, and the rows it
    listed (see _CANDIDATES)."""

    high_water: int
    entries: list[str]
    transactions: list[str]


@dataclass
class Counts:
    """What the census scan counted, per table: every row, and the fresh ones (to the last
    census's reference and to this run's); and the transactions of kind exchange when the
    last census has no count of its own to take them from (None otherwise).

    ``fresh_now`` is None when this run's window lies inside the last census's (nested): its
    fresh rows are then among the last census's, so once every one of those is found, so is
    every one of its own, and the scan did not count them."""

    totals: dict[str, int]
    fresh: dict[str, int]
    fresh_now: dict[str, int] | None
    exchange_transactions: int | None = None


@dataclass(frozen=True)
class TableCount:
    """What the census scan counted in one table (see Counts)."""

    rows: int
    fresh: int
    fresh_now: int | None
    exchange_transactions: int | None


async def _count(
    connection: AsyncConnection,
    predicates: dict[str, str],
    params: dict[str, Any],
    nested: bool,
    exchanges: bool,
    table: str,
    sent: asyncio.Event,
) -> TableCount:
    """Count ``table`` (see _COUNTS, _FILTERED_COUNT); ``sent`` is set once the statement is on
    its way to the server."""
    statement = _COUNTS[table].format(
        fresh=predicates["fresh"],
        fresh_now_count="NULL" if nested else f"count(*) FILTER (WHERE {predicates['fresh_now']})",
        exchanges_count="count(*) FILTER (WHERE r.kind = 'exchange')" if exchanges else "NULL",
    )
    # One window, nested: the counts from the scan node itself (_FILTERED_COUNT). On the bench's
    # rows, one process, alternating: entries 130 -> 96 ms, transactions 77 -> 63 ms (median
    # of eight each): passing every row up to the aggregate, and its two transitions per row,
    # cost about as much as looking each xmin up in the set of xids.
    filtered = nested and not exchanges and predicates["fresh"] != "false"
    # Prepared through the driver for this run alone, not kept in a statement cache: with a
    # set of xids printed into it (xid_set_predicate) the statement differs from run to run.
    # One process per table, no parallel workers: fetchrow asks the server for one row, and
    # PostgreSQL plans no workers for a statement executed with a row limit. What the run
    # wants on two cores is two processes that never wait for each other and start nothing:
    # the two tables' scans beside its own work (about 80 and 50 ms alone on the bench's
    # rows), the last of them with a core to itself once the run's work is done. (Workers,
    # ``fetch``, took 60 ms alone for both, but slowed the run's work and were slowed by it,
    # and each costs a few ms to start: run 2 / bare scan 6.0-6.3 x against 5.0-5.8 x.)
    # (The counts from EXPLAIN run without workers too: the connection is set so, see beside.)
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection
    numbered, values = driver_parameters(
        _FILTERED_COUNT.format(table=table, fresh=predicates["fresh"]) if filtered else statement,
        params,
    )
    prepared = await driver.prepare(numbered)
    counting = asyncio.ensure_future(prepared.fetchrow(*values))
    await asyncio.sleep(0)  # (one turn of the loop: the statement is written to the server)
    sent.set()
    if filtered:
        (plan,) = await counting
        counted = filtered_counts(plan)
        if counted is not None:
            return TableCount(
                rows=counted[0], fresh=counted[1], fresh_now=None, exchange_transactions=None
            )
        # (Not one scan node executed once, which no server has planned: count as below.)
        numbered, values = driver_parameters(statement, params)
        prepared = await driver.prepare(numbered)
        counting = asyncio.ensure_future(prepared.fetchrow(*values))
    rows, fresh, fresh_now, exchange_rows = await counting
    return TableCount(
        rows=int(rows),
        fresh=int(fresh),
        fresh_now=None if fresh_now is None else int(fresh_now),
        exchange_transactions=None if exchange_rows is None else int(exchange_rows),
    )


def filtered_counts(plan: Any) -> tuple[int, int] | None:
    """(rows, fresh rows) from the EXPLAIN ANALYZE of _FILTERED_COUNT (its JSON, as text or
    decoded), when the plan is one sequential scan of the table, executed once: the rows it
    returned are the fresh ones, those its filter removed the others. Else None (a plan with
    workers, say, reports its nodes' rows per loop, rounded). (PostgreSQL 18 prints rows
    with two decimals: a whole number so printed is taken as the number.)"""
    document = json.loads(plan) if isinstance(plan, str) else plan
    node = document[0]["Plan"]
    fresh, old = _whole(node.get("Actual Rows")), _whole(node.get("Rows Removed by Filter"))
    if (
        node.get("Node Type") != "Seq Scan"
        or node.get("Actual Loops") != 1
        or "Plans" in node
        or fresh is None
        or old is None
    ):
        return None
    return fresh + old, fresh


def _whole(number: Any) -> int | None:
    if isinstance(number, bool) or not isinstance(number, int | float):
        return None
    return int(number) if number >= 0 and float(number).is_integer() else None


_ROWS = text(
    "SELECT (SELECT count(*) FROM entries), t.* FROM "
    "(SELECT count(*), count(*) FILTER (WHERE kind = 'exchange') FROM transactions) AS t"
)
_SETTINGS = text("SELECT set_config('work_mem', :work_mem, true), set_config('jit', 'off', true)")
_SERIAL_SETTINGS = text(
    "SELECT set_config('work_mem', :work_mem, true), set_config('jit', 'off', true), "
    "set_config('max_parallel_workers_per_gather', '0', true)"
)
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9A-F]+)?")


async def beside(
    session: AsyncSession,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    serial: bool = False,
) -> asyncio.Task[T]:
    """Start ``work`` on another connection that shares the run's snapshot
    (pg_export_snapshot, then SET TRANSACTION SNAPSHOT): it sees exactly the rows the run's
    own connection sees, while that connection goes on with other work. The snapshot is
    exported once per run (it stays valid while the run's transaction is open). ``serial``:
    its statements plan no parallel workers."""
    snapshot = session.info.get("exported_snapshot")
    if snapshot is None:
        snapshot = str(await session.scalar(text("SELECT pg_export_snapshot()")))
        if not _SNAPSHOT_ID.fullmatch(snapshot):
            raise RuntimeError(f"unexpected snapshot id {snapshot!r}")
        session.info["exported_snapshot"] = snapshot
    bind = session.bind
    assert isinstance(bind, AsyncConnection)

    async def run() -> T:
        async with bind.engine.connect() as connection:
            shared = await connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with shared.begin():
                await shared.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
                await shared.execute(
                    _SERIAL_SETTINGS if serial else _SETTINGS, {"work_mem": SNAPSHOT_WORK_MEM}
                )
                return await work(shared)

    return asyncio.ensure_future(run())


async def _count_beside(
    session: AsyncSession,
    predicates: dict[str, str],
    params: dict[str, Any],
    nested: bool,
    exchanges: bool,
) -> dict[str, asyncio.Task[TableCount]]:
    """Start the census scan beside the run, one table on each of two connections that share
    its snapshot: the run checks the fresh rows meanwhile, and confirm_plan waits for the
    counts before anything it found is trusted.

    Returns once both statements are on their way to the server (or their work has ended,
    say in an error, which waiting for the counts raises): the scans are the longest work of
    an incremental run, so they are started before the run's own work takes the event loop.
    (Until session 7 the run went on at once, and each scan's connection took its turns of the
    loop between the run's Python work: the scans started 11-22 ms into the plan, now ~3.)"""
    tasks: dict[str, asyncio.Task[TableCount]] = {}
    sent: dict[str, asyncio.Event] = {}
    for table in ("entries", "transactions"):
        sent[table] = asyncio.Event()
        count = functools.partial(
            _count, predicates=predicates, params=params, nested=nested, exchanges=exchanges
        )
        tasks[table] = await beside(
            session, functools.partial(count, table=table, sent=sent[table]), serial=True
        )
    try:
        for table, task in tasks.items():
            waiting = asyncio.ensure_future(sent[table].wait())
            try:
                await asyncio.wait((task, waiting), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
    except BaseException:
        for task in tasks.values():
            task.cancel()
        raise
    return tasks


async def digest_span_beside(session: AsyncSession, low: int, high: int) -> asyncio.Task[SealSpan]:
    """digest_span on another connection that shares the run's snapshot (``beside``), while
    the run checks: the same rows, so the same digests."""

    async def digest(connection: AsyncConnection) -> SealSpan:
        async with AsyncSession(bind=connection) as shared:
            return await digest_span(shared, low, high)

    return await beside(session, digest)


class CensusCount:
    """The census scan beside the run (_count_beside), started when the plan says so (start:
    as soon as the plan knows what to count). Waiting for the counts starts it, should nobody
    have."""

    def __init__(self, begin: Callable[[], Awaitable[dict[str, asyncio.Task[TableCount]]]]) -> None:
        self._begin = begin  # _count_beside with its arguments
        self._tasks: dict[str, asyncio.Task[TableCount]] | None = None

    async def start(self) -> None:
        if self._tasks is None:
            self._tasks = await self._begin()

    async def counts(self) -> Counts:
        await self.start()
        assert self._tasks is not None
        try:
            entries, transactions = await asyncio.gather(
                self._tasks["entries"], self._tasks["transactions"]
            )
        except BaseException:
            self.cancel()  # (the other table's scan, should it still run)
            raise
        e_now, t_now = entries.fresh_now, transactions.fresh_now
        return Counts(
            totals={"entries": entries.rows, "transactions": transactions.rows},
            fresh={"entries": entries.fresh, "transactions": transactions.fresh},
            fresh_now=None
            if e_now is None or t_now is None
            else {"entries": e_now, "transactions": t_now},
            exchange_transactions=transactions.exchange_transactions,
        )

    def cancel(self) -> None:
        for task in (self._tasks or {}).values():
            if not task.cancel() and not task.cancelled():
                task.exception()  # (retrieved, so that asyncio does not log it as lost)


async def _census_seed(
    session: AsyncSession,
    window: Window,
    window_now: Window,
    limit: int,
    expected: Expected | None = None,
    counts: Counts | None = None,
) -> CensusSeed:
    """Every row counted, and the rows fresh to either reference fetched. With ``expected``
    and no ``counts`` (they are being counted beside, _count_beside), the fresh rows are
    taken to be where the last census expects them: confirm_plan checks that later."""
    predicates, params = _predicates(window, window_now)
    exchange_transactions = None if counts is None else counts.exchange_transactions
    if counts is None and expected is None:  # (no fresh rows expected anywhere: count rows)
        entries, transactions, exchanges = (await session.execute(_ROWS)).one()
        totals = {"entries": int(entries), "transactions": int(transactions)}
        counts = Counts(totals=totals, fresh={}, fresh_now={})
        exchange_transactions = int(exchanges)
    found: dict[str, list[Any]] = {}
    seen: dict[str, set[Any]] = {}
    read: dict[str, list[Any]] = {}
    probed: set[Any] = set()
    for table in ("entries", "transactions"):
        rows: list[Any] | None = None
        if expected is not None:
            if table == "entries":
                where = {"high": expected.high_water, "ids": [int(i) for i in expected.entries]}
            else:
                listed = {uuid.UUID(i) for i in expected.transactions}
                probed = listed | {e[1] for e in found["entries"]}
                where = {"ids": list(probed)}
                rows = await _by_id_range(session, probed, predicates, params)
            if rows is None:
                statement = _CANDIDATES[table].format(columns=_CENSUS_TABLES[table], **predicates)
                rows = await _fetch(session, statement, params | where | {"limit": limit + 1})
            if len(rows) > limit or (counts is not None and not _all_counted(rows, counts, table)):
                rows = None  # fresh rows elsewhere: find them by the predicate
        if rows is None:
            statement = _FRESH_ROWS.format(table=table, columns=_CENSUS_TABLES[table], **predicates)
            rows = await _fetch(session, statement, params | {"limit": limit})
            found[table] = [r for r in rows if r[FRESH] or r[FRESH_NOW]]
        else:
            read[table] = rows
            fresh_rows: list[Any] = []
            old_ids: set[Any] = set()
            found[table], seen[table] = fresh_rows, old_ids
            for r in rows:  # (one pass)
                if r[FRESH] or r[FRESH_NOW]:
                    fresh_rows.append(r)
                else:
                    old_ids.add(r[0])
    return CensusSeed(
        counts=counts,
        entries=found["entries"],
        transactions=found["transactions"],
        window_now=window_now,
        old_transaction_ids=seen.get("transactions"),
        exchange_transactions=exchange_transactions,
        read=RowsRead(expected.high_water, read["entries"], read["transactions"], probed)
        if expected is not None and len(read) == 2
        else None,
    )


@dataclass
class RowsRead:
    """What the look-ups where the last census expects fresh rows (_CANDIDATES) returned:
    every entry row with an id above ``above`` (fresh or not), and every transaction row
    whose id is one of ``probed`` (each through the primary key: all rows with the id,
    copies included)."""

    above: int
    entries: list[Any]
    transactions: list[Any]
    probed: set[Any]


def span_from_rows(read: RowsRead, low: int, high: int) -> SealSpan | None:
    """The digests of the entries in (low, high], as digest_span computes them, from the rows
    an incremental plan read in the run's snapshot (every entry above ``read.above`` <= low,
    and the stored content hash of its transaction); or None where those rows do not say the
    same for certain, and digest_span reads them again. They do when every entry in the span
    has an id of its own, every field set, and a transaction id that was probed and found
    exactly once: then the span's rows joined with their transactions are these rows, line
    for line, in id order. (A missing or doubled transaction row, a NULL or a doubled entry
    id is tampering that the checks name; the database digests those spans as ever.)

    Why: the rows are in hand. Digesting them here costs about 15 ms of Python for the
    bench's 10,000 new entries; digest_span probes the primary key of transactions for each
    entry and prints each line in SQL, about 30 ms, on a connection of its own beside the
    census scan, for the same two cores."""
    if low < read.above:
        return None
    hashes: dict[Any, str] = {}
    copies: set[Any] = set()
    for row in read.transactions:
        transaction_id = row[0]
        if transaction_id in hashes:
            copies.add(transaction_id)
        hashes[transaction_id] = row[3]  # (content_hash: TRANSACTION_COLUMNS)
    entries = sorted((e for e in read.entries if low < e[0] <= high), key=_ENTRY_ID)
    span = SealSpan(low=low, high=high)
    printed: dict[Any, str] = {}  # (each transaction id printed once)
    lines: list[str] = []
    previous = None
    probed = read.probed
    # (ENTRY_COLUMNS)
    for entry_id, transaction_id, account_id, version, amount, balance_after, _, _ in entries:
        content_hash = hashes.get(transaction_id)
        if (
            entry_id == previous
            or transaction_id not in probed
            or transaction_id in copies
            or content_hash is None
            or account_id is None
            or amount is None
            or balance_after is None
            or version is None
        ):
            return None
        previous = entry_id
        transaction = printed.get(transaction_id)
        if transaction is None:
            transaction = printed[transaction_id] = str(transaction_id)
        if not lines:
            span.first_entry_of_block.append(entry_id)
        lines.append(
            f"{entry_id}|{transaction}|{account_id}|{amount}|{balance_after}|{version}|"
            f"{content_hash}\n"
        )
        if len(lines) == BLOCK_SIZE:
            span.block_digests.append(hashlib.sha256("".join(lines).encode()).hexdigest())
            span.entry_count += len(lines)
            lines = []
    if lines:
        span.block_digests.append(hashlib.sha256("".join(lines).encode()).hexdigest())
        span.entry_count += len(lines)
    return span


_ENTRY_ID = operator.itemgetter(0)  # (ENTRY_COLUMNS)


# (_by_id_range reads a range of ids holding up to twice as many rows as ids, plus this.)
RANGE_SLACK = 100


async def _by_id_range(
    session: AsyncSession, ids: set[Any], predicates: dict[str, str], params: dict[str, Any]
) -> list[Any] | None:
    """The transaction rows whose id is one of ``ids`` (every row with such an id, copies
    included, as the look-ups of _CANDIDATES find them), read by one range of the primary key
    from the least of the ids to the greatest and kept when their id is one of them; or None
    when the range holds more than twice as many rows as ids (then each is looked up).

    Every row whose id is one of ``ids`` lies in the range, so, the range read whole, the rows
    kept are exactly those the look-ups would find. Why: for the bench's 5,000 new
    transactions, 5,000 descents of the index cost about 15 ms; their UUIDv7 ids, close
    together at the end of the index, are one range of it."""
    named = [i for i in ids if i is not None]  # (no row has a NULL id equal to anything)
    if not named:
        return []
    most = 2 * len(named) + RANGE_SLACK
    statement = _CANDIDATES_IN_RANGE.format(columns=_CENSUS_TABLES["transactions"], **predicates)
    rows = await _fetch(
        session, statement, params | {"low": min(named), "high": max(named), "limit": most}
    )
    if len(rows) >= most:
        return None
    return [r for r in rows if r[0] in ids]


def _count_predicates(
    window: Window, window_now: Window, horizon: int
) -> tuple[dict[str, str], dict[str, Any]]:
    """The census scan's predicates: each window's set of xids (xid_set_predicate) where it
    says the same as the window's range, else the range (fresh_predicate)."""
    predicates: dict[str, str] = {}
    params: dict[str, Any] = {}
    for name, of in (("fresh", window), ("fresh_now", window_now)):
        listed = xid_set_predicate(of, horizon)
        if listed is None:
            predicates[name], more = of.predicate(name.replace("fresh", "reference"))
            params |= more
        else:
            predicates[name] = listed
    return predicates, params


def _predicates(window: Window, window_now: Window) -> tuple[dict[str, str], dict[str, Any]]:
    fresh, params = window.predicate("reference")
    fresh_now, params_now = window_now.predicate("reference_now")
    return {"fresh": fresh, "fresh_now": fresh_now}, params | params_now


def _all_counted(rows: list[Any], counts: Counts, table: str) -> bool:
    """Whether ``rows`` hold every row of ``table`` fresh to either reference (with nested
    windows, every row fresh to the last census holds every row fresh to this run too)."""
    return sum(1 for r in rows if r[FRESH]) == counts.fresh[table] and (
        counts.fresh_now is None or sum(1 for r in rows if r[FRESH_NOW]) == counts.fresh_now[table]
    )


@dataclass
class Fresh:
    """What can differ from what the last sealing run verified (the census held)."""

    entry_ids: list[int]
    # Transactions whose row is fresh or that have a fresh entry.
    transaction_ids: list[uuid.UUID]
    # The kind of each fresh transaction row read by the plan that is the only row with its
    # id (as far as the plan looked: none when the rows were found by the predicate).
    transaction_kinds: dict[uuid.UUID, str]
    # Entries to re-digest where sealed: the fresh ones and those of fresh transactions.
    entry_ids_to_rehash: list[int]
    # Each account with a fresh entry, and the lowest version among its fresh entries.
    chain_starts: dict[uuid.UUID, int]
    # The last census's window: rows fresh to it were written since the sealing run (or
    # listed by it); every other row it saw, checked, and the census proves unchanged.
    window: Window
    # The last seal's mark: the fresh entries are those above it that are fresh to the
    # window, and the few of entry_ids at or below it.
    high_water: int
    # The last seal, when it kept account totals (each account's figures over the entries its
    # census counts as old, all still there unchanged): with the fresh entries they give every
    # account's figures (the account pass). None when it kept none.
    totals_of: uuid.UUID | None = None
    # The entries fresh to this run's own census reference (the next seal's census lists them,
    # and leaves them out of its account totals).
    entry_ids_now: list[int] = field(default_factory=list)
    # Accounts with an entry the last census listed as fresh: for the sealing run their old
    # entries need not have been a prefix of the chain (balance_chains reads their tails).
    irregular_accounts: set[Any] = field(default_factory=set)
    # The census scan's counts, possibly still being counted beside the checks (confirm_plan
    # waits for them).
    counted: CensusCount | None = None
    # Transaction rows of kind exchange (exchanges_posted_once): the last census's old ones,
    # which it proves unchanged, plus the fresh ones found; None when the census has no such
    # count (made before it kept one). Found, not counted: should the census scan show that
    # some fresh rows were not found, confirm_plan replaces the plan and the checks run again.
    exchange_transactions: int | None = None
    # The fresh transactions checked from the rows the plan read (transactions_balance,
    # content_hashes): each new one (its row the only one with its id, not listed by the last
    # census) with its row, its entries being all among the fresh entries read
    # (entries_read). The other fresh transactions are looked up again.
    transactions_read: dict[uuid.UUID, Any] = field(default_factory=dict)
    entries_read: list[Any] = field(default_factory=list)
    # The originals that fresh transaction rows name (reverses_id), whatever their kind.
    reversed_ids: set[uuid.UUID] = field(default_factory=set)
    # Every row the plan's look-ups returned (span_from_rows), when it found them there.
    read: RowsRead | None = None
    # The account pass, sent while the plan was made (_decide): its rows, once read.
    account_pass: asyncio.Task[list[Any]] | None = None

    @functools.cached_property
    def looked_up(self) -> list[uuid.UUID]:
        """The fresh transactions other than those checked from the rows the plan read
        (transactions_read): these are looked up again, one by one."""
        return [t for t in self.transaction_ids if t not in self.transactions_read]


@dataclass
class Plan:
    mode: str  # "full" or "incremental"
    reason: str
    fresh: Fresh | None = None
    # When the census failed: reported as tampering unless the full verification finds the
    # break itself (it names the block; this only says that something the last run saw went).
    census_break: TamperReport | None = None
    # The last full verification, carried into the next seal's census.
    full_verified_at: datetime | None = None
    # What the census of this run's seal needs, when this run has counted it already.
    census_seed: CensusSeed | None = None
    # An incremental plan made before the census scan's counts were in (confirm_plan).
    provisional: Provisional | None = None

    def abandon(self) -> None:
        """Stop counting beside, should the run end before confirm_plan (and the account
        pass, should the run end before reading it)."""
        if self.fresh is not None and self.fresh.counted is not None:
            self.fresh.counted.cancel()
        if self.fresh is not None and self.fresh.account_pass is not None:
            self.fresh.account_pass.cancel()

    def as_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {"mode": self.mode, "reason": self.reason}
        if self.fresh is not None:
            report["fresh_entries"] = len(self.fresh.entry_ids)
            report["fresh_transactions"] = len(self.fresh.transaction_ids)
        return report


@dataclass
class _Glance:
    """What _decide needs before anything else, in a quick pass over each table's rows: how
    many rows are fresh to the last census, which of the rows it listed are among them, and
    what the account pass asks (AccountPass), so that the account pass can be on its way
    while the rest of the plan is made (_Tally)."""

    entries: int = 0
    transactions: int = 0
    listed_entries_found: set[Any] = field(default_factory=set)
    listed_transactions_found: set[Any] = field(default_factory=set)
    # The fresh entries at or below the last seal's mark (those the census listed, or rows
    # written into a gap).
    entries_below: list[int] = field(default_factory=list)
    # Entries fresh to this run's own reference (fresh to the last census or not).
    entry_ids_now: list[int] = field(default_factory=list)
    # Accounts with a fresh entry that the last census listed.
    irregular_accounts: set[Any] = field(default_factory=set)

    @classmethod
    def of(
        cls, seed: CensusSeed, listed_entries: set[int], listed: set[Any], high_water: int
    ) -> _Glance:
        glance = cls()
        now, below = glance.entry_ids_now, glance.entries_below
        for entry_id, _, account, _, _, _, fresh, fresh_now in seed.entries:  # (ENTRY_COLUMNS)
            if fresh_now:
                now.append(int(entry_id))
            if not fresh:
                continue
            glance.entries += 1
            if entry_id <= high_water:
                below.append(entry_id)
            if entry_id in listed_entries:
                glance.listed_entries_found.add(entry_id)
                glance.irregular_accounts.add(account)
        for row in seed.transactions:
            if row[FRESH]:
                glance.transactions += 1
                if row[0] in listed:
                    glance.listed_transactions_found.add(row[0])
        return glance


@dataclass(frozen=True)
class AccountPass:
    """What an incremental account pass (checks.send_account_pass) reads: the last seal's
    totals plus the fresh entries (above its mark and fresh to its census's window, and
    ``below`` it), and which of those entries and accounts to treat apart."""

    totals_of: uuid.UUID
    window: Window
    high_water: int
    below: list[int]
    fresh_now: list[int]
    irregular: set[Any]


# checks.send_account_pass: sends the account pass on the run's connection and returns its
# rows' task once the statement is on its way.
SendAccountPass = Callable[[AsyncSession, AccountPass], Awaitable["asyncio.Task[list[Any]]"]]


@dataclass
class _Tally:
    """What _decide needs from the rows the plan found, gathered in one pass over each
    table's rows (until late in session 6, a dozen passes over the same 15,000 rows, ~5 ms)."""

    # The rows fresh to the last census (the rest are fresh to this run's reference alone).
    entries: list[Any] = field(default_factory=list)
    transactions: list[Any] = field(default_factory=list)
    entry_ids: set[Any] = field(default_factory=set)
    # The transactions the fresh entries name.
    entries_transaction_ids: set[Any] = field(default_factory=set)
    # Each account's lowest fresh version.
    chain_starts: dict[Any, int] = field(default_factory=dict)
    # Each fresh transaction id's first row, and the ids found on more than one fresh row.
    transaction_rows: dict[Any, Any] = field(default_factory=dict)
    doubled: set[Any] = field(default_factory=set)
    # Fresh transaction rows of kind exchange, and the originals fresh rows name.
    exchanges: int = 0
    reversed_ids: set[Any] = field(default_factory=set)

    @classmethod
    def of(cls, seed: CensusSeed) -> _Tally:
        tally = cls()
        starts = tally.chain_starts
        entries, entry_ids, named = tally.entries, tally.entry_ids, tally.entries_transaction_ids
        # (ENTRY_COLUMNS)
        for entry in seed.entries:
            entry_id, transaction_id, account, version, _, _, fresh, _ = entry
            if not fresh:
                continue
            entries.append(entry)
            entry_ids.add(entry_id)
            named.add(transaction_id)
            lowest = starts.get(account)
            if lowest is None or version < lowest:
                starts[account] = version
        rows = tally.transaction_rows
        for row in seed.transactions:  # (TRANSACTION_COLUMNS)
            transaction_id, kind, reverses, _, _, fresh, _ = row
            if not fresh:
                continue
            tally.transactions.append(row)
            if transaction_id in rows:
                tally.doubled.add(transaction_id)
            else:
                rows[transaction_id] = row
            if kind == "exchange":
                tally.exchanges += 1
            if reverses is not None:
                tally.reversed_ids.add(reverses)
        return tally

    def sole_rows_kinds(self, old_ids: set[Any] | None) -> dict[uuid.UUID, str]:
        """Each fresh row's kind, keyed by id, for the ids that no other row found (fresh or
        old) shares; nothing when old rows were not looked for (``old_ids`` None)."""
        if old_ids is None:
            return {}
        return {
            t: row[1]
            for t, row in self.transaction_rows.items()
            if t not in self.doubled and t not in old_ids
        }


async def _totals(session: AsyncSession, last_seal: LedgerSeal) -> tuple[bool, str | None]:
    """Whether the last seal kept account totals that match the digest in its census; and,
    when they do not, the digest they were found to have."""
    digest = (last_seal.census or {}).get("totals_digest")
    if digest is None:
        return False, None
    found = await session.scalar(TOTALS_DIGEST, {"id": last_seal.id})
    if found is None:
        return False, None
    return found == digest, None if found == digest else str(found)


async def plan_verification(
    session: AsyncSession,
    last_seal: LedgerSeal | None,
    full_requested: bool,
    reference_now: int | None = None,
    full_every: timedelta = FULL_VERIFICATION_EVERY,
    send_account_pass: SendAccountPass | None = None,
) -> Plan:
    """Decide, inside the run's snapshot, whether a whole-ledger run may verify incrementally
    (``send_account_pass``: see _decide)."""
    if session.get_bind().dialect.name != "postgresql":
        return Plan("full", "SQLite keeps no row versions to compare.")
    if last_seal is None:
        return Plan("full", "No seal yet.")
    census = last_seal.census
    if census is None:
        return Plan("full", "The last seal has no census.")
    full_verified_at = datetime.fromisoformat(census["full_verified_at"])
    if full_requested:
        return Plan("full", "A full verification was requested.")
    if utcnow() - full_verified_at >= full_every:
        return Plan("full", f"Scheduled: the last full verification was at {full_verified_at}.")
    identity_and_horizon = (await session.execute(_IDENTITY_AND_HORIZON)).one()
    if census["identity"] != _identity_of(identity_and_horizon):
        return Plan(
            "full",
            "The database or its ledger tables are not those the census saw (restored, "
            "upgraded or rewritten in place).",
        )
    window = Window.of(census)
    horizon = int(identity_and_horizon[6])
    if not (0 <= horizon - window.start < MAX_XID_DISTANCE and horizon <= window.end):
        return Plan("full", "Too many transactions since the last seal to compare row versions.")
    now = window.next_from(window.start if reference_now is None else reference_now)
    predicates, params = _count_predicates(window, now, horizon)
    # (A census from before censuses counted their exchange transactions: count them.)
    count_exchanges = "exchanges" not in census["transactions"]
    # The census scan starts first, beside, and takes one process (_count): everything else
    # the run does (the fresh rows fetched through indexes, the plan's bookkeeping, the
    # checks, mostly in Python or one statement each) runs meanwhile on the other core.
    # (Until session 6 the fresh rows were fetched first: beside the scan, when it filled
    # both cores, their index look-ups took up to ten times as long.)
    counting = CensusCount(
        functools.partial(
            _count_beside, session, predicates, params, window.holds(now), count_exchanges
        )
    )
    try:
        await counting.start()
        seed = await _census_seed(
            session,
            window,
            now,
            FRESH_LIMIT + 1,
            Expected(
                last_seal.high_water, census["entries"]["fresh"], census["transactions"]["fresh"]
            ),
        )
        plan = await _decide(
            session, last_seal, seed, counting, reference_now is not None, send_account_pass
        )
    except BaseException:
        counting.cancel()
        raise
    if plan.fresh is None:
        counting.cancel()
    else:
        plan.provisional = Provisional(last_seal, window, now, seed)
    return plan


@dataclass
class Provisional:
    """An incremental plan made while the census scan was still counting: what confirm_plan
    needs to check it."""

    last_seal: LedgerSeal
    window: Window
    window_now: Window
    seed: CensusSeed


async def confirm_plan(session: AsyncSession, plan: Plan) -> Plan:
    """Wait for the census scan and check the plan against it: the same plan when every fresh
    row was where the last census expected it and no row it counted as old went; otherwise
    the plan the counts call for (a full verification, usually), and the run checks again."""
    pending = plan.provisional
    if pending is None or plan.fresh is None or plan.fresh.counted is None:
        return plan
    plan.provisional = None
    counts = await plan.fresh.counted.counts()
    seed = pending.seed
    census = pending.last_seal.census or {}
    if all(
        _all_counted(rows, counts, table)
        and census[table]["before"] == counts.totals[table] - counts.fresh[table]
        for table, rows in (("entries", seed.entries), ("transactions", seed.transactions))
    ):
        seed.counts = counts
        if seed.exchange_transactions is None:
            seed.exchange_transactions = counts.exchange_transactions
        return plan
    seed = await _census_seed(
        session,
        pending.window,
        pending.window_now,
        FRESH_LIMIT + 1,
        Expected(
            pending.last_seal.high_water,
            census["entries"]["fresh"],
            census["transactions"]["fresh"],
        ),
        counts,
    )
    return await _decide(
        session, pending.last_seal, seed, plan.fresh.counted, plan.census_seed is not None
    )


async def _decide(
    session: AsyncSession,
    last_seal: LedgerSeal,
    seed: CensusSeed,
    counted: CensusCount,
    keep_seed: bool,
    send_account_pass: SendAccountPass | None = None,
) -> Plan:
    """Incremental when the census holds (seed.counts None: as far as the fresh rows found
    can tell; confirm_plan checks the rest). With ``send_account_pass``, an incremental plan
    that takes the last seal's account totals has its account pass sent as soon as that is
    known, before the rest of the plan is made: Fresh.account_pass."""
    census = last_seal.census or {}
    if len(seed.entries) > FRESH_LIMIT or len(seed.transactions) > FRESH_LIMIT:
        return Plan("full", "Too many rows written since the last seal to be worth comparing.")
    # (The census lists ids as text: read those few, rather than print thousands of ids.)
    listed_entries = {int(i) for i in census["entries"]["fresh"]}
    listed = {uuid.UUID(t) for t in census["transactions"]["fresh"]}
    glance = _Glance.of(seed, listed_entries, listed, last_seal.high_water)
    listed_gone = {
        "entries": len(listed_entries - glance.listed_entries_found),
        "transactions": len(listed - glance.listed_transactions_found),
    }
    # Rows, not ids: with its primary key dropped, or through a child table (INHERITS), a
    # table can hold one id twice, and a fresh copy of a row must not make up for a deleted
    # old one.
    fresh_count = {"entries": glance.entries, "transactions": glance.transactions}
    gone: dict[str, int] = {}
    for table in ("entries", "transactions"):
        # Rows older than the reference can only go (a rewrite leaves a fresh version), and
        # the fresh rows the sealing run saw must all still be here. Kept apart, so that one
        # count cannot make up for the other.
        older_gone = 0
        if seed.counts is not None:
            older_gone = census[table]["before"] - (seed.counts.totals[table] - fresh_count[table])
        gone[table] = abs(older_gone) + listed_gone[table]
    if all(n == 0 for n in gone.values()):
        kept, altered = await _totals(session, last_seal)
        if altered is not None:
            return _census_broken(
                last_seal,
                "The account totals kept with the last seal do not match its census.",
                "The account totals kept with the last seal were altered behind the service: "
                "their digest is not the one in its census.",
                expected={"totals_digest": census["totals_digest"]},
                found={"totals_digest": altered},
            )
        window = Window.of(census)
        account_pass = None
        if kept and send_account_pass is not None:
            # (On its way while the rest of the plan is made and the run's first checks
            # work in Python: its rows are read by incremental_prelude.)
            account_pass = await send_account_pass(
                session,
                AccountPass(
                    last_seal.id,
                    window,
                    last_seal.high_water,
                    glance.entries_below,
                    glance.entry_ids_now,
                    glance.irregular_accounts,
                ),
            )
        try:
            return await _incremental(
                session, last_seal, seed, counted, keep_seed, kept, glance, account_pass
            )
        except BaseException:
            if account_pass is not None:
                account_pass.cancel()
            raise
    return _census_broken(
        last_seal,
        "Rows that the last sealing run saw were rewritten or deleted.",
        f"{gone['entries']} entries and {gone['transactions']} transactions that the run which "
        "made the last seal saw were rewritten or deleted behind the service.",
        expected={k: census[k]["before"] for k in ("entries", "transactions")},
        found={k: census[k]["before"] - gone[k] for k in ("entries", "transactions")},
    )


async def _incremental(
    session: AsyncSession,
    last_seal: LedgerSeal,
    seed: CensusSeed,
    counted: CensusCount,
    keep_seed: bool,
    kept: bool,
    glance: _Glance,
    account_pass: asyncio.Task[list[Any]] | None,
) -> Plan:
    """The incremental plan, the census holding (_decide): its bookkeeping in one pass over
    each table's rows (_Tally), while the account pass, if sent, works in the database."""
    census = last_seal.census or {}
    listed = {uuid.UUID(t) for t in census["transactions"]["fresh"]}
    tally = _Tally.of(seed)
    entry_ids, fresh_rows = tally.entry_ids, set(tally.transaction_rows)
    transaction_ids = list(fresh_rows | tally.entries_transaction_ids)
    # A fresh transaction row changes the lines of its entries in the blocks. Entries the
    # sealing run saw can belong only to a transaction it saw too (its checks found every
    # entry's transaction), so, the census holding, only to one it listed as fresh, or
    # one with a second, old row under the same id; every other fresh transaction is new
    # and its entries are fresh themselves.
    old_exchanges = census["transactions"].get("exchanges")
    if old_exchanges is not None:
        seed.exchange_transactions = old_exchanges + tally.exchanges
    copied = seed.old_transaction_ids
    kinds = tally.sole_rows_kinds(copied)
    suspects = [t for t in fresh_rows if t in listed or copied is None or t in copied]
    of_fresh: Any = ()
    if suspects:
        if account_pass is not None:  # (the connection is the account pass's until it is done)
            await asyncio.wait((account_pass,))
        of_fresh = (
            await session.execute(_ENTRIES_OF, {"ids": [str(t) for t in suspects]})
        ).scalars()
    return Plan(
        "incremental",
        "The census of the last seal holds: only rows written since are re-hashed.",
        fresh=Fresh(
            entry_ids=sorted(entry_ids),
            transaction_ids=transaction_ids,
            transaction_kinds=kinds,
            entry_ids_to_rehash=sorted(entry_ids.union(of_fresh)),
            chain_starts=tally.chain_starts,
            window=Window.of(census),
            high_water=last_seal.high_water,
            totals_of=last_seal.id if kept else None,
            entry_ids_now=glance.entry_ids_now,
            irregular_accounts=glance.irregular_accounts,
            counted=counted,
            exchange_transactions=seed.exchange_transactions,
            # The new transactions (the only row with their id, not listed by the last
            # census): as above, their entries are all fresh, all among those read.
            transactions_read={t: tally.transaction_rows[t] for t in kinds if t not in listed},
            entries_read=tally.entries,
            reversed_ids=tally.reversed_ids,
            read=seed.read,
            account_pass=account_pass,
        ),
        full_verified_at=datetime.fromisoformat(census["full_verified_at"]),
        census_seed=seed if keep_seed else None,
    )


def _census_broken(
    last_seal: LedgerSeal,
    reason: str,
    message: str,
    expected: dict[str, Any],
    found: dict[str, Any],
) -> Plan:
    """A full verification, and the tampering to report should it find no broken block."""
    return Plan(
        "full",
        reason,
        census_break=TamperReport(
            seal_id=str(last_seal.id),
            high_water=last_seal.high_water,
            message=message,
            first_bad_block=None,
            entries_from=None,
            expected=expected,
            found=found,
        ),
    )


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


def new_seal(
    previous: LedgerSeal | None,
    span: SealSpan,
    census: dict[str, Any] | None = None,
) -> LedgerSeal:
    digest = span.digest
    previous_chained = previous.chained_digest if previous else GENESIS
    return LedgerSeal(
        previous_seal_id=previous.id if previous else None,
        previous_high_water=span.low,
        high_water=span.high,
        entry_count=span.entry_count,
        block_digests=span.block_digests,
        digest=digest,
        chained_digest=chain(previous_chained, digest, span.high, census),
        census=census,
    )

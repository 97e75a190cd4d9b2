"""The checks a reconciliation run makes. Each is one or two set-based queries (the database
does the scanning), and each finding names the rows involved with what was expected and found.

Every check reads inside the run's snapshot, so postings that land during the run are either
wholly visible or not at all: no false alarms from half-seen work.
"""

from __future__ import annotations

import asyncio
import hashlib
import operator
import uuid
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    text,
    union,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    Account,
    AccountLimitChange,
    Community,
    Entry,
    Exchange,
    IdempotencyRecord,
    Transaction,
)
from app.models.exchanges import ExchangeStatus, Resolution
from app.models.ledger import AccountKind, TransactionKind
from app.reconciliation.findings import CheckResult, Finding
from app.reconciliation.seals import (
    SEAL_TOTALS,
    TOTALS_COLUMNS_AFTER_SEAL,
    AccountPass,
    AccountTotals,
    Fresh,
    driver_parameters,
    totals_ctes,
)

T = TypeVar("T")

POSTED_EXCHANGE_STATUSES = (
    ExchangeStatus.confirmed.value,
    ExchangeStatus.disputed.value,
    ExchangeStatus.resolved.value,
)


def _in_community(column: Any, community_id: uuid.UUID | None) -> ColumnElement[bool]:
    return literal(True) if community_id is None else column == community_id


def _among(column: Any, ids: list[uuid.UUID]) -> ColumnElement[bool]:
    """``column = ANY(:ids)``: one array parameter however many ids (PostgreSQL, the only
    backend that verifies incrementally)."""
    condition: ColumnElement[bool] = column == any_(bindparam(None, ids, type_=ARRAY(Uuid())))
    return condition


async def transactions_balance(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> CheckResult:
    result = CheckResult(
        "transactions_balance",
        "Every transaction has at least two entries, none zero, summing to 0, and every "
        "entry's transaction exists.",
    )
    if session.get_bind().dialect.name == "postgresql":
        for row in await _transaction_pass(session, community_id, fresh):
            if not row.transaction_exists:
                result.add(_orphan_entries_finding(row.id, int(row.entries)))
            elif row.entries is None:
                result.add(_no_entries_finding(row.id))
            elif row.entries < 2 or row.total != 0 or row.zeros > 0:
                result.add(_unbalanced_finding(row.id, row.entries, row.total, row.zeros))
        return result
    # The portable path (SQLite, which never verifies incrementally).
    zero = func.sum(case((Entry.amount == 0, 1), else_=0))
    grouped = (
        select(Entry.transaction_id, func.count(), func.sum(Entry.amount), zero)
        .group_by(Entry.transaction_id)
        .having(or_(func.count() < 2, func.sum(Entry.amount) != 0, zero > 0))
    )
    if community_id is not None:  # a whole-ledger run needs no join: one scan of entries
        grouped = grouped.join(Transaction, Transaction.id == Entry.transaction_id).where(
            Transaction.community_id == community_id
        )
    for transaction_id, count, total, zeros in await session.execute(grouped):
        result.add(_unbalanced_finding(transaction_id, count, total, zeros))
    orphans = await session.execute(
        select(Transaction.id)
        .where(_in_community(Transaction.community_id, community_id))
        .where(~select(Entry.id).where(Entry.transaction_id == Transaction.id).exists())
    )
    for (transaction_id,) in orphans:
        result.add(_no_entries_finding(transaction_id))
    if community_id is None:  # a scoped run cannot tell whose entries these are
        stray = await session.execute(
            select(Entry.transaction_id, func.count())
            .outerjoin(Transaction, Transaction.id == Entry.transaction_id)
            .where(Transaction.id.is_(None))
            .group_by(Entry.transaction_id)
        )
        for transaction_id, count in stray:
            result.add(_orphan_entries_finding(transaction_id, count))
    return result


def _unbalanced_finding(transaction_id: Any, count: int, total: int, zeros: int) -> Finding:
    return Finding(
        f"Transaction {transaction_id} has {count} entries summing to {total} ({zeros} zero).",
        {"transaction_id": str(transaction_id)},
        expected={"entries": ">= 2", "sum": 0, "zero_entries": 0},
        found={"entries": count, "sum": int(total), "zero_entries": int(zeros)},
    )


def _no_entries_finding(transaction_id: Any) -> Finding:
    return Finding(
        f"Transaction {transaction_id} has no entries.",
        {"transaction_id": str(transaction_id)},
        expected={"entries": ">= 2"},
        found={"entries": 0},
    )


def _orphan_entries_finding(transaction_id: Any, count: int) -> Finding:
    return Finding(
        f"{count} entries name transaction {transaction_id}, which does not exist.",
        {"transaction_id": str(transaction_id)},
        expected="an existing transaction",
        found={"entries": count},
    )


async def community_sums(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> CheckResult:
    result = CheckResult("balances_sum_to_zero", "Within each community, all balances sum to 0.")
    for row in await _account_pass(session, community_id, fresh):
        if row.kind != "community":
            continue
        if row.balance != 0:
            result.add(
                Finding(
                    f"Cached balances of community {row.id} sum to {row.balance}.",
                    {"community_id": str(row.id)},
                    expected=0,
                    found=int(row.balance),
                )
            )
        if row.e_total != 0:
            result.add(
                Finding(
                    f"Entries of community {row.id} sum to {row.e_total}.",
                    {"community_id": str(row.id)},
                    expected=0,
                    found=int(row.e_total),
                )
            )
    return result


async def _account_pass(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> list[Any]:
    """One pass over entries grouped by account for both cached_totals (the accounts whose
    cached figures differ) and community_sums (communities whose cached balances or entries
    do not sum to zero); made once per run's snapshot and shared."""
    cached = session.info.get("account_pass")
    if cached is not None and cached[0] == community_id:
        return list(cached[1])
    if fresh is not None and fresh.totals_of is not None:
        sent = await _send_account_pass(session, fresh)
        return _keep_account_pass(session, community_id, fresh, await sent)
    earned = func.sum(case((Entry.amount > 0, Entry.amount), else_=0))
    sums = (
        select(
            Entry.account_id.label("account_id"),
            func.sum(Entry.amount).label("total"),
            func.count().label("entries"),
            earned.label("earned"),
            # What was spent is what was earned less the total: one aggregate fewer.
            (earned - func.sum(Entry.amount)).label("spent"),
        )
        .group_by(Entry.account_id)
        .subquery()
    )
    joined = (
        select(
            Account.id.label("account_id"),
            Account.community_id.label("community_id"),
            Account.balance.label("balance"),
            Account.version.label("version"),
            Account.earned_total.label("earned_total"),
            Account.spent_total.label("spent_total"),
            func.coalesce(sums.c.total, 0).label("e_total"),
            func.coalesce(sums.c.entries, 0).label("e_count"),
            func.coalesce(sums.c.earned, 0).label("e_earned"),
            func.coalesce(sums.c.spent, 0).label("e_spent"),
        )
        .outerjoin(sums, sums.c.account_id == Account.id)
        .where(_in_community(Account.community_id, community_id))
        .cte("joined")
    )
    c = joined.c
    accounts = select(
        literal("account").label("kind"),
        c.account_id.label("id"),
        c.balance,
        c.version,
        c.earned_total,
        c.spent_total,
        c.e_total,
        c.e_count,
        c.e_earned,
        c.e_spent,
    ).where(
        or_(
            c.balance != c.e_total,
            c.version != c.e_count,
            c.earned_total != c.e_earned,
            c.spent_total != c.e_spent,
        )
    )
    communities = (
        select(
            literal("community"),
            c.community_id,
            # (Cast back: sum(bigint) is numeric, and would make the column numeric for all.)
            cast(func.sum(c.balance), BigInteger),
            null(),
            null(),
            null(),
            func.sum(c.e_total),
            null(),
            null(),
            null(),
        )
        .group_by(c.community_id)
        .having(or_(func.sum(c.balance) != 0, func.sum(c.e_total) != 0))
    )
    rows = list((await session.execute(union_all(accounts, communities))).all())
    session.info["account_pass"] = (community_id, rows)
    return rows


# Incremental runs only (whole-ledger runs), in one statement over the last seal's account
# totals and the fresh entries: the rows of the account pass below ("account", "community"),
# each account's chain tail from the totals ("chain", see balance_chains), and a last row with
# the next seal's account totals ("totals").
#
# Chain tails: an account whose census listed none of its entries had, for the sealing run,
# only old entries, versions 1..n (its checks passed), all still there unchanged; n and their
# total are in the totals. So its fresh entries, in version order, must be versions n+1, n+2,
# ... each balance_after the previous plus its amount, starting from the total: the full
# check's rule on the tail, without reading the old entries. (Accounts with a listed entry,
# "irregular", take _FRESH_CHAINS_SQL: a listed entry may sit below an old one.) The fresh
# entries are numbered in version order per account by a window over them alone, and hung
# from their account's totals (n and the total) by a join; each account's figures are its
# totals plus the sums of its fresh entries. (Until session 6 the totals stood in as one row
# per account ahead of the fresh entries, and a window sorted and numbered all 20,000 rows and
# summed them again: 65 ms, now 48.) The joins with the totals are FULL joins, which only a
# hash or merge join can answer: the row estimates for unnest are guesses, which the planner
# once answered with a nested loop over the totals, once for each fresh entry (a minute).
# The fresh entries are read as the plan found them (Fresh.entry_ids): those above the last
# seal's mark that are fresh to its census's window, in one range of the primary key rather
# than an index probe each, and the few at or below it (listed by the census, or written into
# a gap) by id.
_ACCOUNTS_FROM_TOTALS = """
WITH fresh AS (
  SELECT r.id, r.account_id, r.account_version, r.amount, r.balance_after FROM entries r
  WHERE (r.id > :above OR r.id = ANY(CAST(:below AS bigint[]))) AND {fresh}
),
old AS MATERIALIZED ({seal_totals}),
chained AS (
  SELECT true AS present, f.*, row_number() OVER w AS rank, lag(balance_after) OVER w AS lagged
  FROM fresh f
  WINDOW w AS (PARTITION BY account_id ORDER BY account_version, id)
),
tails AS (
  SELECT c.account_id, c.account_version AS version, c.id, c.amount, c.balance_after,
    CASE WHEN c.rank = 1 THEN coalesce(o.t, 0) ELSE coalesce(c.lagged, 0) END AS previous,
    c.rank + coalesce(o.n, 0) AS position
  FROM chained c FULL JOIN old o ON o.account_id = c.account_id
  WHERE c.present
),
added AS (
  SELECT account_id, count(*) AS n, CAST(sum(amount) AS bigint) AS t,
    CAST(sum(greatest(amount, 0)) AS bigint) AS earned,
    CAST(sum(greatest(-amount, 0)) AS bigint) AS spent
  FROM fresh GROUP BY account_id
),
figures AS (
  SELECT coalesce(o.account_id, a.account_id) AS account_id,
    coalesce(o.n, 0) + coalesce(a.n, 0) AS n, coalesce(o.t, 0) + coalesce(a.t, 0) AS t,
    coalesce(o.earned, 0) + coalesce(a.earned, 0) AS earned,
    coalesce(o.spent, 0) + coalesce(a.spent, 0) AS spent
  FROM old o FULL JOIN added a ON a.account_id = o.account_id
),
joined AS (
  SELECT a.id, a.community_id, a.balance, a.version, a.earned_total, a.spent_total,
    coalesce(f.t, 0) AS e_total, coalesce(f.n, 0) AS e_count,
    coalesce(f.earned, 0) AS e_earned, coalesce(f.spent, 0) AS e_spent
  FROM accounts a LEFT JOIN figures f ON f.account_id = a.id
),
{totals}
-- (Typed NULLs: this part, in parentheses for its ORDER BY, is typed on its own.)
(SELECT 'chain' AS kind, account_id AS id, NULL::bigint AS balance, version,
  NULL::bigint AS earned_total, NULL::bigint AS spent_total, NULL::bigint AS e_total,
  NULL::bigint AS e_count, NULL::bigint AS e_earned, NULL::bigint AS e_spent,
  id AS entry_id, amount, balance_after, previous, position, NULL::uuid[] AS totals_accounts,
  NULL::text AS totals_entries, NULL::text AS totals_balances,
  NULL::text AS totals_earned, NULL::text AS digest
FROM tails
WHERE (balance_after IS DISTINCT FROM previous + amount OR version <> position)
  AND account_id <> ALL(CAST(:irregular AS uuid[]))
ORDER BY account_id, version, id)
UNION ALL
SELECT 'account', id, balance, version, earned_total, spent_total, e_total, e_count,
  e_earned, e_spent, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM joined
WHERE balance <> e_total OR version <> e_count OR earned_total <> e_earned
  OR spent_total <> e_spent
UNION ALL
SELECT 'community', community_id, CAST(sum(balance) AS bigint), NULL, NULL, NULL,
  CAST(sum(e_total) AS bigint), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL
FROM joined GROUP BY community_id HAVING sum(balance) <> 0 OR sum(e_total) <> 0
UNION ALL
SELECT 'totals', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, {columns} FROM totals
"""


async def _send_account_pass(session: AsyncSession, fresh: Fresh) -> asyncio.Task[list[Any]]:
    """The account pass of ``fresh`` (send_account_pass): the one its plan sent, or sent now."""
    if fresh.account_pass is not None:
        return fresh.account_pass
    assert fresh.totals_of is not None
    below = [i for i in fresh.entry_ids if i <= fresh.high_water]
    return await send_account_pass(
        session,
        AccountPass(
            fresh.totals_of,
            fresh.window,
            fresh.high_water,
            below,
            fresh.entry_ids_now,
            fresh.irregular_accounts,
        ),
    )


async def send_account_pass(
    session: AsyncSession, account_pass: AccountPass
) -> asyncio.Task[list[Any]]:
    """Send the incremental account pass (_ACCOUNTS_FROM_TOTALS) on the run's connection and
    return once the statement is on its way: the task's result is its rows. Every account's
    figures are the last seal's totals plus the fresh entries; the entries the census vouches
    for are not summed again. The same statement makes the next seal's totals, should the run
    seal, and checks the chain tails of the accounts whose entries the last census did not
    list (balance_chains takes the "chain" rows). An incremental plan sends it as soon as it
    knows it takes the last seal's totals (seals.plan_verification), while the rest of the
    plan is made."""
    written_since, window = account_pass.window.predicate("reference")
    params: dict[str, Any] = window | {
        "seal": str(account_pass.totals_of),
        "above": account_pass.high_water,
        "below": account_pass.below,
        "fresh_now": account_pass.fresh_now,
        "irregular": list(account_pass.irregular),
    }
    statement = _ACCOUNTS_FROM_TOTALS.format(
        fresh=written_since,
        seal_totals=SEAL_TOTALS,
        totals=totals_ctes(account_pass.fresh_now),
        columns=TOTALS_COLUMNS_AFTER_SEAL,
    )
    numbered, values = driver_parameters(statement, params)
    raw = await (await session.connection()).get_raw_connection()
    driver: Any = raw.driver_connection
    prepared = await driver.prepare(numbered)
    sent: asyncio.Task[list[Any]] = asyncio.ensure_future(prepared.fetch(*values))
    # (One turn of the loop: the task writes the statement to the server and waits for rows.)
    await asyncio.sleep(0)
    return sent


def _keep_account_pass(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh, records: list[Any]
) -> list[Any]:
    rows = []
    for record in records:
        row = SimpleNamespace(**dict(record.items()))
        if row.kind == "totals":
            session.info["account_totals"] = (fresh, AccountTotals.of(row, fresh.totals_of))
        else:
            rows.append(row)
    session.info["account_pass"] = (community_id, rows)
    return rows


async def incremental_prelude(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh, also: Callable[[], T]
) -> T:
    """The first steps of an incremental run's checks, side by side: the account pass is sent
    to the database, and while it works there (about 45 ms on the bench's 10,000 accounts)
    this process checks the new fresh transactions from the rows the plan read
    (_transactions_read) and does ``also`` (the run digests the new span); then the account
    pass's rows are read. The checks then take both from the snapshot's cache, as they would
    have made them one after the other: the same statements, the same rows."""
    sent = await _send_account_pass(session, fresh) if fresh.totals_of is not None else None
    try:
        session.info["transactions_read"] = (fresh, _transactions_read(fresh))
        done = also()
    finally:
        records = await sent if sent is not None else None  # (the connection is free again)
    if records is not None:
        _keep_account_pass(session, community_id, fresh, records)
    return done


async def cached_totals(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> CheckResult:
    result = CheckResult(
        "cached_totals",
        "Each account's cached balance, version and earned/spent totals equal what its entries give.",
    )
    for row in await _account_pass(session, community_id, fresh):
        if row.kind != "account":
            continue
        result.add(
            Finding(
                f"Account {row.id}'s cached figures differ from its entries.",
                {"account_id": str(row.id)},
                expected={
                    "balance": int(row.e_total),
                    "version": int(row.e_count),
                    "earned_total": int(row.e_earned),
                    "spent_total": int(row.e_spent),
                },
                found={
                    "balance": row.balance,
                    "version": row.version,
                    "earned_total": row.earned_total,
                    "spent_total": row.spent_total,
                },
            )
        )
    return result


class _ChainRow(NamedTuple):
    entry_id: int
    account_id: uuid.UUID
    version: int
    amount: int
    balance_after: int
    previous: int | None
    position: int


async def balance_chains(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> CheckResult:
    result = CheckResult(
        "balance_after_chain",
        "Each account's entries run versions 1..n and each balance_after is the previous plus its amount.",
    )
    if fresh is not None:
        rows: Any = []
        starts = list(fresh.chain_starts.items())  # (the statements order their findings)
        if fresh.totals_of is not None:
            # Where the last seal's account totals say where each chain stood (its old entries
            # are versions 1..n ending at the total), the fresh entries alone continue it:
            # checked by the account pass (_ACCOUNTS_FROM_TOTALS).
            rows = [
                _ChainRow(
                    r.entry_id, r.id, r.version, r.amount, r.balance_after, r.previous, r.position
                )
                for r in await _account_pass(session, community_id, fresh)
                if r.kind == "chain"
            ]
            starts = [(a, low) for a, low in starts if a in fresh.irregular_accounts]
        if starts:
            rows += list(
                await session.execute(
                    text(_FRESH_CHAINS_SQL),
                    {"accounts": [str(a) for a, _ in starts], "lows": [low for _, low in starts]},
                )
            )
    else:
        chained = (
            select(
                Entry.id.label("entry_id"),
                Entry.account_id.label("account_id"),
                Entry.account_version.label("version"),
                Entry.amount.label("amount"),
                Entry.balance_after.label("balance_after"),
                func.coalesce(
                    func.lag(Entry.balance_after).over(
                        partition_by=Entry.account_id, order_by=Entry.account_version
                    ),
                    0,
                ).label("previous"),
                func.row_number()
                .over(partition_by=Entry.account_id, order_by=Entry.account_version)
                .label("position"),
            )
            .where(
                literal(True)
                if community_id is None
                else Entry.account_id.in_(
                    select(Account.id).where(Account.community_id == community_id)
                )
            )
            .subquery()
        )
        rows = await session.execute(
            select(chained).where(
                or_(
                    chained.c.balance_after != chained.c.previous + chained.c.amount,
                    chained.c.version != chained.c.position,
                )
            )
        )
    for row in rows:
        expected_balance = None if row.previous is None else row.previous + row.amount
        result.add(
            Finding(
                f"Entry {row.entry_id} breaks account {row.account_id}'s chain at version {row.version}.",
                {"entry_id": row.entry_id, "account_id": str(row.account_id)},
                expected={"version": row.position, "balance_after": expected_balance},
                found={"version": row.version, "balance_after": row.balance_after},
            )
        )
    return result


# Incremental (PostgreSQL): every entry the last sealing run saw is unchanged and its chain
# was right, so only the chains from each account's lowest fresh version on can differ. Fresh
# entries need not all sit above the old ones (a posting with an older xid can commit after
# one with a newer xid on the same account), so the whole tail from there is checked, hanging
# from the entry just before it: one index range scan per account (account_id,
# account_version) from that entry on; it is read, not checked.
_FRESH_CHAINS_SQL = """
SELECT * FROM (
SELECT e.id AS entry_id, starts.account_id, e.account_version AS version, e.amount,
  e.balance_after, starts.low,
  coalesce(lag(e.balance_after) OVER w, CASE WHEN starts.low = 1 THEN 0 END) AS previous,
  starts.low - CASE WHEN starts.low = 1 THEN 1 ELSE 2 END + row_number() OVER w AS position
FROM unnest(CAST(:accounts AS uuid[]), CAST(:lows AS bigint[])) AS starts(account_id, low)
CROSS JOIN LATERAL (
  SELECT id, account_version, amount, balance_after FROM entries
  WHERE account_id = starts.account_id AND account_version >= starts.low - 1
  OFFSET 0  -- keeps the subquery (and its index range scan) per account
) AS e
WINDOW w AS (PARTITION BY starts.account_id ORDER BY e.account_version, e.id)
) AS chained
WHERE version >= low AND (balance_after IS DISTINCT FROM previous + amount OR version <> position)
ORDER BY account_id, version, entry_id
"""


async def limits_respected(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> CheckResult:
    """A balance outside its limits is a finding only when the entry that put it there moved
    away from the range while those limits were in force (limits may be tightened later)."""
    result = CheckResult(
        "limits", "No balance is outside its limits, except where a later tightening left it there."
    )
    min_balance = func.coalesce(Account.min_balance, Community.default_min_balance)
    max_balance = func.coalesce(Account.max_balance, Community.default_max_balance)
    rows = await session.execute(
        select(
            Account.id,
            Account.balance,
            min_balance,
            max_balance,
            func.coalesce(Community.limits_changed_at, Community.updated_at),
        )
        .join(Community, Community.id == Account.community_id)
        .where(_in_community(Account.community_id, community_id))
        .where(or_(Account.balance < min_balance, Account.balance > max_balance))
    )
    for account_id, balance, low, high, community_changed in rows:
        last = (
            await session.execute(
                select(Entry.id, Entry.amount, Entry.posted_at)
                .where(Entry.account_id == account_id)
                .order_by(Entry.account_version.desc())
                .limit(1)
            )
        ).first()
        if last is None:
            continue
        limit_changed = await session.scalar(
            select(func.max(AccountLimitChange.changed_at)).where(
                AccountLimitChange.account_id == account_id
            )
        )
        tightened_later = any(
            moment is not None and moment > last.posted_at
            for moment in (limit_changed, community_changed)
        )
        moved_away = (balance < low and last.amount < 0) or (balance > high and last.amount > 0)
        if moved_away and not tightened_later:
            result.add(
                Finding(
                    f"Account {account_id} is at {balance}, outside [{low}, {high}], put there by entry {last.id}.",
                    {"account_id": str(account_id), "entry_id": last.id},
                    expected={"min_balance": low, "max_balance": high},
                    found={"balance": balance},
                )
            )
    return result


async def reversals(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> CheckResult:
    result = CheckResult(
        "reversals",
        "Every reversal mirrors an existing, non-reversal transaction, reversed at most once.",
    )
    original = Transaction.__table__.alias("original")
    # Incremental: transactions and entries are as the last sealing run verified them except
    # the fresh ones, so only reversals that are fresh or reverse a fresh original can differ.
    scope: ColumnElement[bool] = literal(True)
    twice_scope: ColumnElement[bool] = literal(True)
    if fresh is not None:
        # Found through the primary key and the reverses_id index, not a scan; a fresh
        # transaction row read by the plan (the only row with its id) is a reversal or not
        # by the kind read then. The reversals of a fresh transaction are looked up through
        # the reverses_id index, except those of the new ones the plan read
        # (Fresh.transactions_read: a fresh row, the only row with its id, not listed by the
        # last census): a row naming one of those is fresh itself, so it is among the rows
        # above. (The sealing run's snapshot held no row with that id, or the census would
        # not hold; an old reversal naming it would have pointed to a missing transaction
        # then, and that run passed.) On the bench that is every fresh transaction: 5,000
        # look-ups, and their ids sent, spared.
        kinds = fresh.transaction_kinds
        unknown = [t for t in fresh.transaction_ids if t not in kinds]
        originals = fresh.looked_up
        found = (
            (
                await session.execute(
                    text(_FRESH_REVERSALS), {"fresh": originals, "unknown": unknown}
                )
            ).scalars()
            if unknown or originals
            else ()
        )
        known = {t for t, kind in kinds.items() if kind == TransactionKind.reversal.value}
        ids = list(known.union(found))
        if not ids and not fresh.reversed_ids:
            return result
        scope = _among(Transaction.id, ids)
        # An original named by more than one row now is named by a fresh row (the rows the
        # sealing run saw named each original once at most): the originals that fresh rows
        # name, whatever their kind (the count, as in full, does not ask), and those the
        # reversals found name.
        # (One IN over a union, not an OR of two: an OR would cost a scan of transactions.)
        named = bindparam(None, sorted(fresh.reversed_ids), type_=ARRAY(Uuid()))
        twice_scope = Transaction.reverses_id.in_(
            union(
                select(Transaction.reverses_id).where(_among(Transaction.id, ids)),
                select(func.unnest(named)),
            )
        )
    rows = await session.execute(
        select(Transaction.id, Transaction.reverses_id, original.c.id, original.c.kind)
        .outerjoin(original, original.c.id == Transaction.reverses_id)
        .where(Transaction.kind == TransactionKind.reversal.value)
        .where(_in_community(Transaction.community_id, community_id))
        .where(scope)
    )
    for reversal_id, reverses_id, found_id, found_kind in rows:
        if found_id is None:
            result.add(
                Finding(
                    f"Reversal {reversal_id} points to missing transaction {reverses_id}.",
                    {"transaction_id": str(reversal_id)},
                    expected="an existing original",
                    found=None,
                )
            )
        elif found_kind == TransactionKind.reversal.value:
            result.add(
                Finding(
                    f"Reversal {reversal_id} reverses another reversal {reverses_id}.",
                    {"transaction_id": str(reversal_id), "original_id": str(reverses_id)},
                    expected="a non-reversal original",
                    found=found_kind,
                )
            )
    twice = await session.execute(
        select(Transaction.reverses_id, func.count())
        .where(Transaction.reverses_id.is_not(None))
        .where(_in_community(Transaction.community_id, community_id))
        .where(twice_scope)
        .group_by(Transaction.reverses_id)
        .having(func.count() > 1)
    )
    for original_id, count in twice:
        result.add(
            Finding(
                f"Transaction {original_id} was reversed {count} times.",
                {"transaction_id": str(original_id)},
                expected=1,
                found=count,
            )
        )
    # The reversal's entries are the exact negation of the original's.
    mirror = Entry.__table__.alias("mirror")
    mismatched = await session.execute(
        select(Transaction.id, Entry.account_id, Entry.amount, mirror.c.amount)
        .join(Entry, Entry.transaction_id == Transaction.id)
        .outerjoin(
            mirror,
            and_(
                mirror.c.transaction_id == Transaction.reverses_id,
                mirror.c.account_id == Entry.account_id,
            ),
        )
        .where(Transaction.kind == TransactionKind.reversal.value)
        .where(_in_community(Transaction.community_id, community_id))
        .where(scope)
        .where(or_(mirror.c.amount.is_(None), mirror.c.amount != -Entry.amount))
    )
    for reversal_id, account_id, amount, original_amount in mismatched:
        result.add(
            Finding(
                f"Reversal {reversal_id} does not mirror its original on account {account_id}.",
                {"transaction_id": str(reversal_id), "account_id": str(account_id)},
                expected=None if original_amount is None else -original_amount,
                found=amount,
            )
        )
    # ... and leaves none of the original's lines out.
    reversing = Entry.__table__.alias("reversing")
    left_out = await session.execute(
        select(Transaction.id, mirror.c.account_id, mirror.c.amount)
        .join(mirror, mirror.c.transaction_id == Transaction.reverses_id)
        .outerjoin(
            reversing,
            and_(
                reversing.c.transaction_id == Transaction.id,
                reversing.c.account_id == mirror.c.account_id,
            ),
        )
        .where(Transaction.kind == TransactionKind.reversal.value)
        .where(_in_community(Transaction.community_id, community_id))
        .where(scope)
        .where(reversing.c.id.is_(None))
    )
    for reversal_id, account_id, original_amount in left_out:
        result.add(
            Finding(
                f"Reversal {reversal_id} leaves out its original's line on account {account_id}.",
                {"transaction_id": str(reversal_id), "account_id": str(account_id)},
                expected=-original_amount,
                found=None,
            )
        )
    return result


# (Each id through an index, LATERAL ... OFFSET 0: a join lets the planner scan every
# transaction instead.)
_FRESH_REVERSALS = """
SELECT t.id FROM unnest(CAST(:unknown AS uuid[])) AS unknown(id) CROSS JOIN LATERAL
  (SELECT id FROM transactions WHERE id = unknown.id AND kind = 'reversal' OFFSET 0) AS t
UNION
SELECT t.id FROM unnest(CAST(:fresh AS uuid[])) AS fresh(id) CROSS JOIN LATERAL
  (SELECT id FROM transactions WHERE reverses_id = fresh.id OFFSET 0) AS t
"""


async def exchanges_posted_once(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> CheckResult:
    result = CheckResult(
        "exchanges_posted_once",
        "Confirmed exchanges have exactly one posted exchange transaction; others have none.",
    )
    unclaimed_possible = True
    if fresh is not None:
        # Incremental (whole ledger): each exchange written since the last seal has its
        # transactions checked through the primary key; every other one is as the sealing run
        # checked it, and so are the transactions it names (the census holds). Instead of
        # looking through every transaction for an unclaimed one, a count: when the distinct
        # exchange transactions claimed number as many as the exchange transaction rows (the
        # last census's old ones, unchanged, and the fresh ones found), none is unclaimed.
        written_since, params = fresh.window.predicate("reference")
        probed = list(
            await session.execute(
                text(_EXCHANGES_BY_INDEX.format(fresh=written_since)),
                params
                | {
                    "posted": list(POSTED_EXCHANGE_STATUSES),
                    "reversed": Resolution.reversed.value,
                },
            )
        )
        rows: Any = [r[1:6] for r in probed if r.part == "posted"]
        reversed_without: Any = [(r[1], r[3], r[6]) for r in probed if r.part == "reversed"]
        claimed = next(r.claimed for r in probed if r.part == "claimed")
        unclaimed_possible = claimed != fresh.exchange_transactions  # (None: not known)
    else:
        rows = await session.execute(
            select(
                Exchange.id,
                Exchange.status,
                Exchange.transaction_id,
                Transaction.id,
                Transaction.kind,
            )
            .outerjoin(Transaction, Transaction.id == Exchange.transaction_id)
            .where(_in_community(Exchange.community_id, community_id))
            .where(
                or_(
                    and_(
                        Exchange.status.in_(POSTED_EXCHANGE_STATUSES),
                        or_(
                            Transaction.id.is_(None),
                            Transaction.kind != TransactionKind.exchange.value,
                        ),
                    ),
                    and_(
                        ~Exchange.status.in_(POSTED_EXCHANGE_STATUSES),
                        Exchange.transaction_id.is_not(None),
                    ),
                )
            )
        )
    for exchange_id, status, transaction_ref, found_id, kind in rows:
        result.add(
            Finding(
                f"Exchange {exchange_id} is {status} but its transaction is "
                f"{'missing' if found_id is None and transaction_ref else kind or 'absent'}.",
                {
                    "exchange_id": str(exchange_id),
                    "transaction_id": str(transaction_ref) if transaction_ref else None,
                },
                expected="one exchange transaction"
                if status in POSTED_EXCHANGE_STATUSES
                else "no transaction",
                found=kind,
            )
        )
    unclaimed: Any = []
    if unclaimed_possible:
        unclaimed = await session.execute(
            select(Transaction.id)
            .where(Transaction.kind == TransactionKind.exchange.value)
            .where(_in_community(Transaction.community_id, community_id))
            .where(~select(Exchange.id).where(Exchange.transaction_id == Transaction.id).exists())
        )
    for (transaction_id,) in unclaimed:
        result.add(
            Finding(
                f"Exchange transaction {transaction_id} belongs to no exchange.",
                {"transaction_id": str(transaction_id)},
                expected="exactly one exchange",
                found=0,
            )
        )
    if fresh is None:
        reversed_without = await session.execute(
            select(Exchange.id, Exchange.reversal_transaction_id, Transaction.reverses_id)
            .outerjoin(Transaction, Transaction.id == Exchange.reversal_transaction_id)
            .where(_in_community(Exchange.community_id, community_id))
            .where(Exchange.resolution == Resolution.reversed.value)
            .where(
                # IS DISTINCT FROM: a "reversal" that reverses nothing (NULL) is no reversal.
                or_(
                    Transaction.id.is_(None),
                    Transaction.reverses_id.is_distinct_from(Exchange.transaction_id),
                )
            )
        )
    for exchange_id, reversal_id, reverses in reversed_without:
        result.add(
            Finding(
                f"Exchange {exchange_id} was resolved by reversal, but its reversal does not reverse it.",
                {
                    "exchange_id": str(exchange_id),
                    "transaction_id": str(reversal_id) if reversal_id else None,
                },
                expected="a reversal of the exchange's transaction",
                found=str(reverses) if reverses else None,
            )
        )
    return result


# exchanges_posted_once, incrementally: the same two findings as its statements, and the
# number of distinct exchange transactions that some exchange claims. Only exchange rows
# written since the last seal (fresh to its census's window) have their transactions looked
# up: an older row is one the sealing run saw and checked (it passed), naming transactions
# the census proves unchanged, so a posted one claims an exchange transaction and any other
# names none. (An exchange rewritten or added behind the service is a fresh row; one deleted
# leaves its transaction unclaimed, which the count shows.) The fresh rows, usually none or a
# few, are joined with their transactions once; the claimed transactions are the distinct
# ids of the fresh rows' exchange transactions and of the older posted rows' transactions
# (UNION: hashed). (Until session 7 every exchange row went through one CTE with a lateral
# look-up each, scanned three times, and a sorted count(DISTINCT): 11.5 ms on the bench's
# 10,000 exchanges, now 6.)
_EXCHANGES_BY_INDEX = """
WITH f AS (
  SELECT r.id, r.status, r.transaction_id, r.resolution, r.reversal_transaction_id,
    t.id AS found_id, t.kind, v.id AS reversal_found, v.reverses_id
  FROM exchanges r
  LEFT JOIN transactions t ON t.id = r.transaction_id
  LEFT JOIN transactions v ON v.id = r.reversal_transaction_id
  WHERE {fresh}
)
SELECT 'posted' AS part, id, status, transaction_id, found_id, kind,
  CAST(NULL AS uuid) AS reverses_id, CAST(NULL AS bigint) AS claimed
FROM f
WHERE (status = ANY(CAST(:posted AS text[])) AND (found_id IS NULL OR kind <> 'exchange'))
  OR (status <> ALL(CAST(:posted AS text[])) AND transaction_id IS NOT NULL)
UNION ALL
SELECT 'reversed', id, status, reversal_transaction_id, NULL, NULL, reverses_id, NULL
FROM f
WHERE resolution = :reversed
  AND (reversal_found IS NULL OR reverses_id IS DISTINCT FROM transaction_id)
UNION ALL
SELECT 'claimed', NULL, NULL, NULL, NULL, NULL, NULL, count(*) FROM (
  SELECT found_id FROM f WHERE kind = 'exchange'
  UNION
  SELECT transaction_id FROM exchanges r
  WHERE NOT {fresh} AND status = ANY(CAST(:posted AS text[])) AND transaction_id IS NOT NULL
) AS claimed
"""


async def idempotency_records(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> CheckResult:
    result = CheckResult(
        "idempotency_records",
        "Every idempotency record that names a transaction names an existing one.",
    )
    stmt = (
        select(IdempotencyRecord.id, IdempotencyRecord.principal, IdempotencyRecord.transaction_id)
        .outerjoin(Transaction, Transaction.id == IdempotencyRecord.transaction_id)
        .where(IdempotencyRecord.transaction_id.is_not(None), Transaction.id.is_(None))
    )
    if community_id is not None:
        # A record carries no community of its own and its transaction is gone; a scoped run
        # looks at the records made on that community's routes (whole-ledger runs see all).
        stmt = stmt.where(IdempotencyRecord.path.contains(f"/communities/{community_id}/"))
    rows = await session.execute(stmt)
    for record_id, principal, transaction_id in rows:
        result.add(
            Finding(
                f"Idempotency record {record_id} ({principal}) names missing transaction {transaction_id}.",
                {"idempotency_record_id": record_id, "transaction_id": str(transaction_id)},
                expected="an existing transaction",
                found=None,
            )
        )
    return result


async def fund_history(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> CheckResult:
    """The fund moves only by donations in, grants out, equal-split remainders out, and
    reversals of those."""
    result = CheckResult(
        "fund_history",
        "The fund's entries are donations (in), grants (out), exchange remainders (out) or reversals.",
    )
    rows = await session.execute(
        select(Entry.id, Entry.amount, Transaction.id, Transaction.kind, Exchange.fund_minutes)
        .join(Account, Account.id == Entry.account_id)
        .join(Transaction, Transaction.id == Entry.transaction_id)
        .outerjoin(Exchange, Exchange.transaction_id == Transaction.id)
        .where(Account.kind == AccountKind.fund.value)
        .where(_in_community(Account.community_id, community_id))
    )
    expected_sign: dict[str, Callable[[int, int | None], bool]] = {
        TransactionKind.donation.value: lambda amount, _: amount > 0,
        TransactionKind.grant.value: lambda amount, _: amount < 0,
        TransactionKind.exchange.value: lambda amount, remainder: (
            remainder is not None and amount == -remainder
        ),
        TransactionKind.reversal.value: lambda _amount, _remainder: True,
    }
    for entry_id, amount, transaction_id, kind, remainder in rows:
        rule = expected_sign.get(kind)
        if rule is None or not rule(amount, remainder):
            result.add(
                Finding(
                    f"Fund entry {entry_id} ({kind}, {amount:+d}) is not a donation, grant or remainder.",
                    {"entry_id": entry_id, "transaction_id": str(transaction_id)},
                    expected="donation > 0, grant < 0, or -(exchange fund remainder)",
                    found={"kind": kind, "minutes": amount},
                )
            )
    return result


def transaction_content_hash(
    transaction_id: uuid.UUID,
    community_id: uuid.UUID,
    kind: str,
    occurred_on: str,
    reverses_id: uuid.UUID | None,
    memo: str,
    lines: Sequence[tuple[uuid.UUID, int]],
) -> str:
    """The same digest the posting engine stores (app.ledger.posting.content_hash)."""
    head = [str(transaction_id), str(community_id), kind, occurred_on, str(reverses_id or ""), memo]
    return _content_digest(head, [(str(account), minutes) for account, minutes in lines])


def _content_digest(head: list[str], lines: list[tuple[str, int]]) -> str:
    """transaction_content_hash over its fields as text (``lines``: account ids as text, in
    entry order; sorted here by account, ties kept in that order)."""
    parts = [*head, *(f"{account}:{minutes}" for account, minutes in sorted(lines, key=_first))]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _first(line: tuple[str, int]) -> str:
    return line[0]


def _hash_finding(transaction_id: Any, stored: str, recomputed: str) -> Finding:
    return Finding(
        f"Transaction {transaction_id}'s content no longer matches its hash: edited behind the service.",
        {"transaction_id": str(transaction_id)},
        expected=stored,
        found=recomputed,
    )


# PostgreSQL recomputes the hashes itself (sha256() is built in since 11), in the same pass
# over entries grouped by transaction that checks the balance, and sends back only the
# transactions with something wrong: the same digest as transaction_content_hash, byte for
# byte. Lines are sorted by the account id's text in byte order (COLLATE "C"), as Python's
# str sort does; concat_ws skips the NULL line list of a transaction without entries.
# An ordered string_agg per transaction costs one small sort per group (seconds at 500,000
# transactions), so the usual one- and two-line transactions take their lines from plain
# min()/max() over "account:minutes" (account ids have one length, 36, so that orders by
# account); only longer ones, or two lines on one account, fall back to the ordered aggregate.
# The FULL JOIN also finds entries whose transaction row is gone.
_PER_TRANSACTION_SQL = """
SELECT id, transaction_exists, content_hash, recomputed, entries, total, zeros FROM (
  SELECT {id} AS id, t.id IS NOT NULL AS transaction_exists,
    t.content_hash, lines.n AS entries, lines.total, lines.zeros,
    encode(sha256(convert_to(concat_ws(chr(31),
      t.id::text, t.community_id::text, t.kind, to_char(t.occurred_on, 'YYYY-MM-DD'),
      coalesce(t.reverses_id::text, ''), t.memo,
      CASE
        WHEN lines.n IS NULL THEN NULL
        WHEN lines.n = 1 THEN lines.low
        WHEN lines.n = 2 AND left(lines.low, 36) <> left(lines.high, 36)
          THEN lines.low || chr(31) || lines.high
        ELSE (SELECT string_agg(e.account_id::text || ':' || e.amount::text, chr(31)
                                ORDER BY e.account_id::text COLLATE "C", e.id)
              FROM entries e WHERE e.transaction_id = t.id)
      END), 'UTF8')), 'hex') AS recomputed
  FROM {source}
  {community_filter}
) AS passed
WHERE NOT transaction_exists OR entries IS NULL OR entries < 2 OR total <> 0 OR zeros > 0
  OR recomputed <> content_hash
ORDER BY id
"""
_LINES = """{count} AS n, sum(amount) AS total, count(*) FILTER (WHERE amount = 0) AS zeros,
      min(line) AS low, max(line) AS high
    FROM (
      SELECT transaction_id, amount, (account_id::text || ':' || amount::text) COLLATE "C" AS line
      FROM entries {where}
    ) AS e"""
# Every transaction with its entries grouped (the FULL JOIN also finds entries whose
# transaction row is gone) ...
_ALL_TRANSACTIONS = {
    "id": "coalesce(t.id, lines.transaction_id)",
    "source": "transactions AS t FULL JOIN (SELECT transaction_id, "
    + _LINES.format(count="count(*)", where="")
    + " GROUP BY transaction_id) AS lines ON lines.transaction_id = t.id",
}
# ... or, incrementally, the fresh transactions one by one, through the primary key and the
# transaction_id index of entries (a missing row is one whose entries name it in vain).
_FRESH_TRANSACTIONS = {
    "id": "fresh.id",
    "source": "unnest(CAST(:fresh AS uuid[])) AS fresh(id) "  # noqa: S608
    "LEFT JOIN LATERAL (SELECT * FROM transactions WHERE id = fresh.id OFFSET 0) AS t ON true "
    "CROSS JOIN LATERAL (SELECT "
    + _LINES.format(count="nullif(count(*), 0)", where="WHERE transaction_id = fresh.id")
    + ") AS lines",
}


class _Passed(NamedTuple):
    """A row as _PER_TRANSACTION_SQL gives it, for a transaction checked in Python."""

    id: uuid.UUID
    transaction_exists: bool
    content_hash: str
    recomputed: str
    entries: int | None
    total: int | None
    zeros: int | None


_ENTRY_ID = operator.itemgetter(0)


def _by_id(row: Any) -> uuid.UUID:
    return uuid.UUID(str(row.id))


def _transactions_read(fresh: Fresh) -> list[Any]:
    """The new fresh transactions checked as _PER_TRANSACTION_SQL checks them, from the rows
    the plan read (Fresh.transactions_read: all their entries are among Fresh.entries_read):
    those with something wrong, ordered by id. (Rows read by position: seals.ENTRY_COLUMNS,
    seals.TRANSACTION_COLUMNS.)"""
    read = fresh.transactions_read
    lines: dict[Any, list[tuple[int, Any, int]]] = {}  # (entry id, account, minutes)
    for entry in fresh.entries_read:
        entry_id, transaction_id, account, _, amount = entry[:5]
        if transaction_id in read:
            mine = lines.get(transaction_id)
            if mine is None:
                lines[transaction_id] = [(entry_id, account, amount)]
            else:
                mine.append((entry_id, account, amount))
    rows = []
    for transaction_id, t in read.items():
        found = lines.get(transaction_id, ())
        # (head: the transaction's fields as text, printed by PostgreSQL with the row.)
        if len(found) == 2:  # (the usual case, as _content_digest orders it, without a sort)
            (first, low, low_minutes), (second, high, high_minutes) = found
            low, high = str(low), str(high)
            if high < low or (high == low and second < first):
                low, low_minutes, high, high_minutes = high, high_minutes, low, low_minutes
            text = f"{t[4]}\x1f{low}:{low_minutes}\x1f{high}:{high_minutes}"
            recomputed = hashlib.sha256(text.encode()).hexdigest()
            total = low_minutes + high_minutes
            zeros = (low_minutes == 0) + (high_minutes == 0)
        else:  # (in entry-id order: _content_digest keeps it among lines of one account)
            printed = [(str(a), minutes) for _, a, minutes in sorted(found, key=_ENTRY_ID)]
            recomputed = _content_digest([t[4]], printed)
            total = sum(minutes for _, minutes in printed)
            zeros = sum(1 for _, minutes in printed if minutes == 0)
        count, content_hash = len(found), t[3]
        if count < 2 or total != 0 or zeros > 0 or recomputed != content_hash:
            passed = _Passed(t[0], True, content_hash, recomputed, count or None, total, zeros)
            rows.append(passed)
    return sorted(rows, key=_by_id)


async def _transaction_pass(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None
) -> list[Any]:
    """One pass over entries grouped by transaction for both transactions_balance and
    content_hashes (PostgreSQL); made once per run's snapshot and shared."""
    cached = session.info.get("transaction_pass")
    if cached is not None and cached[0] == community_id and cached[1] is fresh:
        return list(cached[2])
    params: dict[str, Any] = {}
    parts = {"community_filter": "", **_ALL_TRANSACTIONS}
    if community_id is not None:
        # Entries are tied to a community only through their transaction: a scoped run
        # leaves out entries whose transaction is gone (it cannot tell whose they are).
        parts["community_filter"] = "WHERE t.community_id = CAST(:community_id AS uuid)"
        params["community_id"] = str(community_id)
    rows: list[Any] = []
    if fresh is not None:  # everything else is as the last sealing run verified it
        parts |= _FRESH_TRANSACTIONS
        read = session.info.get("transactions_read")  # (incremental_prelude)
        rows = read[1] if read is not None and read[0] is fresh else _transactions_read(fresh)
        params["fresh"] = fresh.looked_up
    if fresh is None or params["fresh"]:
        statement = text(_PER_TRANSACTION_SQL.format(**parts))
        rows = sorted([*rows, *(await session.execute(statement, params)).all()], key=_by_id)
    session.info["transaction_pass"] = (community_id, fresh, rows)
    return rows


async def content_hashes(
    session: AsyncSession, community_id: uuid.UUID | None, fresh: Fresh | None = None
) -> CheckResult:
    """Recompute every transaction's content hash from its rows: an edit made behind the
    service (a memo, an amount, a moved entry) shows here, naming the transaction."""
    result = CheckResult(
        "content_hashes",
        "Each transaction's stored content hash matches its memo, kind, date and entries.",
    )
    if session.get_bind().dialect.name == "postgresql":
        for row in await _transaction_pass(session, community_id, fresh):
            if row.transaction_exists and row.recomputed != row.content_hash:
                result.add(_hash_finding(row.id, row.content_hash, row.recomputed))
        return result
    return await content_hashes_in_python(session, community_id, result)


async def content_hashes_in_python(
    session: AsyncSession, community_id: uuid.UUID | None, result: CheckResult
) -> CheckResult:
    """The portable path (SQLite has no sha256): stream transactions with their entries."""
    stmt = (
        select(
            Transaction.id,
            Transaction.community_id,
            Transaction.kind,
            Transaction.occurred_on,
            Transaction.reverses_id,
            Transaction.memo,
            Transaction.content_hash,
            Entry.account_id,
            Entry.amount,
        )
        .outerjoin(Entry, Entry.transaction_id == Transaction.id)
        .where(_in_community(Transaction.community_id, community_id))
        .order_by(Transaction.id, Entry.id)
        .execution_options(yield_per=5000)
    )
    current: Any = None
    lines: list[tuple[uuid.UUID, int]] = []

    def finish() -> None:
        if current is None:
            return
        recomputed = transaction_content_hash(
            current.id,
            current.community_id,
            current.kind,
            current.occurred_on.isoformat(),
            current.reverses_id,
            current.memo,
            lines,
        )
        if recomputed != current.content_hash:
            result.add(_hash_finding(current.id, current.content_hash, recomputed))

    async for partition in (await session.stream(stmt)).partitions():
        for row in partition:
            if current is None or row.id != current.id:
                finish()
                current, lines = row, []
            if row.account_id is not None:  # a transaction whose entries are all gone
                lines.append((row.account_id, row.amount))
    finish()
    return result


CHECKS = (
    transactions_balance,
    community_sums,
    cached_totals,
    balance_chains,
    limits_respected,
    reversals,
    exchanges_posted_once,
    idempotency_records,
    fund_history,
    content_hashes,
)

"""The ledger's invariants (DESIGN.md), checked directly in the database.

These read the tables, not the API, so a bug that the API would paper over (a cached balance
that drifted, a gap in the ``balance_after`` chain) is still seen.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Account, AccountLimitChange, Community, Entry, Transaction
from app.models.ledger import IdempotencyRecord, TransactionKind


@dataclass(frozen=True)
class Snapshot:
    """Everything a refused request must leave exactly as it was."""

    transactions: int
    entries: int
    idempotency_records: int
    limit_changes: int
    accounts: tuple[tuple[str, int, int, int, int, int | None, int | None], ...]
    communities: tuple[tuple[str, int, int], ...]


async def snapshot(session: AsyncSession) -> Snapshot:
    accounts = await session.execute(
        select(
            Account.id,
            Account.balance,
            Account.version,
            Account.earned_total,
            Account.spent_total,
            Account.min_balance,
            Account.max_balance,
        ).order_by(Account.id)
    )
    communities = await session.execute(
        select(Community.id, Community.default_min_balance, Community.default_max_balance).order_by(
            Community.id
        )
    )
    return Snapshot(
        transactions=await _count(session, Transaction.id),
        entries=await _count(session, Entry.id),
        idempotency_records=await _count(session, IdempotencyRecord.id),
        limit_changes=await _count(session, AccountLimitChange.id),
        accounts=tuple((str(r[0]), r[1], r[2], r[3], r[4], r[5], r[6]) for r in accounts.all()),
        communities=tuple((str(r[0]), r[1], r[2]) for r in communities.all()),
    )


async def _count(session: AsyncSession, column: object) -> int:
    return int(await session.scalar(select(func.count(column))) or 0)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Limits:
    min_balance: int
    max_balance: int


async def effective_limits(session: AsyncSession) -> dict[uuid.UUID, Limits]:
    rows = await session.execute(
        select(
            Account.id,
            Account.min_balance,
            Account.max_balance,
            Community.default_min_balance,
            Community.default_max_balance,
        ).join(Community, Community.id == Account.community_id)
    )
    return {
        account_id: Limits(
            default_min if own_min is None else own_min,
            default_max if own_max is None else own_max,
        )
        for account_id, own_min, own_max, default_min, default_max in rows
    }


async def check_ledger_invariants(
    session: AsyncSession,
    *,
    community_id: uuid.UUID | None = None,
    limits_unchanged: bool = False,
) -> None:
    """Assert invariants 1, 2, 3 and 5 over the database (or one community's books).

    ``limits_unchanged``: no limit was tightened since anything was posted, so every balance
    must also lie within its account's limits now (invariant 4 without history).
    """
    entry_query = select(
        Entry.transaction_id,
        Entry.account_id,
        Entry.amount,
        Entry.balance_after,
        Entry.account_version,
        Entry.posted_at,
    ).order_by(Entry.account_id, Entry.account_version)
    transaction_query = select(Transaction.id, Transaction.kind, Transaction.reverses_id)
    account_query = select(
        Account.id,
        Account.community_id,
        Account.balance,
        Account.version,
        Account.earned_total,
        Account.spent_total,
    )
    if community_id is not None:
        entry_query = entry_query.join(Account, Account.id == Entry.account_id).where(
            Account.community_id == community_id
        )
        transaction_query = transaction_query.where(Transaction.community_id == community_id)
        account_query = account_query.where(Account.community_id == community_id)
    entries = (await session.execute(entry_query)).all()
    transactions = {row.id: row for row in (await session.execute(transaction_query)).all()}
    accounts = {row.id: row for row in (await session.execute(account_query)).all()}

    # 1. Every transaction: >= 2 entries, none zero, summing to 0.
    by_transaction: dict[uuid.UUID, list[tuple[uuid.UUID, int]]] = defaultdict(list)
    for transaction_id, account_id, amount, *_ in entries:
        assert amount != 0, f"zero entry in transaction {transaction_id}"
        by_transaction[transaction_id].append((account_id, amount))
    for transaction_id in transactions:
        lines = by_transaction.get(transaction_id, [])
        assert len(lines) >= 2, f"transaction {transaction_id} has {len(lines)} entries"
        assert sum(a for _, a in lines) == 0, f"transaction {transaction_id} is unbalanced"
    assert set(by_transaction) <= set(transactions), "entries without a transaction"

    # 2. Within a community, balances sum to 0.
    per_community: dict[uuid.UUID, int] = defaultdict(int)
    for account in accounts.values():
        per_community[account.community_id] += account.balance
    for community_id, total in per_community.items():
        assert total == 0, f"community {community_id} balances sum to {total}"

    # 3. Cached balance, version and totals agree with the entries; the chain is unbroken, and
    # runs in time order as in version order (so a balance as of an instant is the chain's).
    by_account: dict[uuid.UUID, list[tuple[int, int, int, datetime]]] = defaultdict(list)
    for _, account_id, amount, balance_after, version, posted_at in entries:
        by_account[account_id].append((amount, balance_after, version, posted_at))
    for account_id, account in accounts.items():
        chain = by_account.get(account_id, [])
        running = 0
        previous_time: datetime | None = None
        for expected_version, (amount, balance_after, version, posted_at) in enumerate(
            chain, start=1
        ):
            assert version == expected_version, f"account {account_id}: gap at v{version}"
            running += amount
            assert balance_after == running, (
                f"account {account_id} v{version}: balance_after {balance_after} != {running}"
            )
            assert previous_time is None or posted_at >= previous_time, (
                f"account {account_id} v{version}: posted at {posted_at}, before v{version - 1}"
            )
            previous_time = posted_at
        assert account.balance == running, f"account {account_id}: cached balance drifted"
        assert account.version == len(chain), f"account {account_id}: version != entry count"
        assert account.earned_total == sum(a for a, *_ in chain if a > 0)
        assert account.spent_total == -sum(a for a, *_ in chain if a < 0)

    # 5. A transaction is reversed at most once, by its mirror image; reversals are final.
    reversed_by: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for transaction in transactions.values():
        is_reversal = transaction.kind == TransactionKind.reversal.value
        assert is_reversal == (transaction.reverses_id is not None)
        if transaction.reverses_id is not None:
            reversed_by[transaction.reverses_id].append(transaction.id)
    for original_id, reversals in reversed_by.items():
        assert len(reversals) == 1, f"transaction {original_id} reversed {len(reversals)} times"
        assert transactions[original_id].kind != TransactionKind.reversal.value
        mirror = sorted((a, -m) for a, m in by_transaction[original_id])
        assert sorted(by_transaction[reversals[0]]) == mirror, "reversal is not the mirror image"

    # 4. Without limit changes, every balance is within its limits.
    if limits_unchanged:
        for account_id, limits in (await effective_limits(session)).items():
            if account_id not in accounts:
                continue
            balance = accounts[account_id].balance
            assert limits.min_balance <= balance <= limits.max_balance, (
                f"account {account_id}: {balance} outside [{limits.min_balance}, "
                f"{limits.max_balance}]"
            )

"""Ledger rules beyond the posting engine: who may post, reversals, limits, and reading the
books (accounts, statements with running balances, transactions)."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.access.community import CommunityAccess
from app.access.errors import InsufficientRole, InsufficientScope
from app.core.clock import utcnow
from app.core.database import READ_SNAPSHOT_OPTION
from app.core.errors import DomainError, InvalidCursor, Unprocessable, problem_body
from app.core.ids import parse_id
from app.core.pagination import PageParams, decode_cursor, encode_cursor
from app.ledger import errors
from app.ledger.idempotency import RenderedJSON
from app.ledger.posting import (
    PostedTransaction,
    Poster,
    PostingOutcome,
    PostingRequest,
    post_transaction,
    post_transactions,
)
from app.ledger.schemas import (
    AccountLimitsUpdate,
    AccountRead,
    BatchCreate,
    BatchItemResult,
    BatchResult,
    Counterparty,
    EntryRead,
    Statement,
    StatementLine,
    TransactionCreate,
    TransactionRead,
)
from app.models import Account, AccountLimitChange, Community, Entry, Transaction
from app.models.identity import MemberRole
from app.models.ledger import TransactionKind

CursorValue = TypeVar("CursorValue")

# --- who may write ------------------------------------------------------------------------


def not_a_ledger_writer() -> InsufficientRole:
    return InsufficientRole("Only coordinators and admins post transactions directly.")


def require_ledger_writer(access: CommunityAccess) -> Poster:
    """Coordinators, admins and partner clients with ``ledger:write`` post transactions."""
    principal = access.principal
    if principal.client is not None:
        if not principal.has_scope("ledger:write"):
            raise InsufficientScope("Posting transactions needs the ledger:write scope.")
        return Poster(client_id=principal.client.id)
    if not access.has_role(MemberRole.coordinator):
        raise not_a_ledger_writer()
    assert principal.user is not None
    return Poster(user_id=principal.user.id)


# --- reading accounts ---------------------------------------------------------------------


def account_read(community: Community, account: Account) -> AccountRead:
    min_balance = (
        community.default_min_balance if account.min_balance is None else account.min_balance
    )
    max_balance = (
        community.default_max_balance if account.max_balance is None else account.max_balance
    )
    return AccountRead(
        id=account.id,
        community_id=account.community_id,
        member_id=account.member_id,
        kind=account.kind,  # type: ignore[arg-type]
        name=account.name,
        status=account.status,  # type: ignore[arg-type]
        balance=account.balance,
        min_balance=min_balance,
        max_balance=max_balance,
        min_balance_override=account.min_balance,
        max_balance_override=account.max_balance,
        available_to_spend=max(0, account.balance - min_balance),
        earned_total=account.earned_total,
        spent_total=account.spent_total,
        version=account.version,
        updated_at=account.updated_at,
    )


async def member_account(session: AsyncSession, member_id: uuid.UUID) -> Account:
    account = await session.scalar(select(Account).where(Account.member_id == member_id))
    if account is None:  # pragma: no cover - every member gets an account when they join
        raise errors.AccountNotFound("This member has no account.")
    return account


async def update_limits(
    session: AsyncSession, access: CommunityAccess, account: Account, data: AccountLimitsUpdate
) -> Account:
    changes = data.changes()
    changes.pop("reason", None)
    new_min = changes.get("min_balance", account.min_balance)
    new_max = changes.get("max_balance", account.max_balance)
    effective_min = access.community.default_min_balance if new_min is None else new_min
    effective_max = access.community.default_max_balance if new_max is None else new_max
    if effective_min > effective_max:  # pragma: no cover - min <= 0 <= max by the schema
        raise errors.InvalidLimits("min_balance must not exceed max_balance.")
    session.add(
        AccountLimitChange(
            account_id=account.id,
            old_min_balance=account.min_balance,
            old_max_balance=account.max_balance,
            new_min_balance=new_min,
            new_max_balance=new_max,
            reason=data.reason,
            changed_by_user_id=access.principal.user.id if access.principal.user else None,
        )
    )
    account.min_balance = new_min
    account.max_balance = new_max
    account.updated_at = utcnow()
    await session.flush()
    return account


# --- posting ------------------------------------------------------------------------------


def posting_request(data: TransactionCreate, today: date) -> PostingRequest:
    """The engine's request for a validated body; ``today`` (UTC) is its date of service
    unless it names one, which may not be later."""
    if data.occurred_on is not None and data.occurred_on > today:
        raise Unprocessable("occurred_on cannot be in the future.")
    lines = []
    for entry in data.entries:
        account_id = parse_id(entry.account_id)
        if account_id is None:
            raise errors.AccountNotFound(f"No account has id {entry.account_id!r}.")
        lines.append((account_id, entry.minutes))
    return PostingRequest(
        kind=_KINDS[data.kind],
        lines=tuple(lines),
        occurred_on=data.occurred_on or today,
        memo=data.memo,
        details=data.details,
    )


_KINDS = {kind.value: kind for kind in TransactionKind}


def transaction_read(
    posted: PostedTransaction, reversed_by_id: uuid.UUID | None = None
) -> TransactionRead:
    """The response for a transaction the engine has just posted, read by pydantic-core
    straight from the engine's dataclasses (faster than building it field by field in Python,
    which a 1,000-item batch response does a thousand times)."""
    read = TransactionRead.model_validate(posted, from_attributes=True)
    read.reversed_by_id = reversed_by_id
    return read


async def create_batch(
    session: AsyncSession, access: CommunityAccess, data: BatchCreate
) -> RenderedJSON:
    """Post a batch; the answer is a ``BatchResult``, already serialised: each item is
    rendered while the database writes the chunk it belongs to."""
    poster = require_ledger_writer(access)
    requests: list[PostingRequest | None] = []
    early: dict[int, DomainError] = {}
    today = utcnow().date()
    for index, item in enumerate(data.transactions):
        try:
            requests.append(posting_request(item, today))
        except DomainError as exc:
            if data.atomic:
                raise errors.BatchRefused(
                    f"Transaction {index} was refused: {exc.detail}",
                    extra={"index": index, "reason": exc.code},
                ) from exc
            early[index] = exc
            requests.append(None)

    valid = [(i, r) for i, r in enumerate(requests) if r is not None]
    rendered: list[str | None] = [None] * len(requests)

    def render(chunk: Sequence[PostingOutcome]) -> None:
        for outcome in chunk:
            index = valid[outcome.index][0]
            rendered[index] = batch_item_result(index, outcome).model_dump_json()

    try:
        outcomes = await post_transactions(
            session,
            access.community,
            [r for _, r in valid],
            poster=poster,
            atomic=data.atomic,
            while_writing=render,
        )
    except errors.LedgerError as exc:
        if exc.index is None:  # pragma: no cover - the engine names the refused request
            raise errors.BatchRefused(
                f"A transaction was refused: {exc.detail}", extra={"reason": exc.code}
            ) from exc
        index = valid[exc.index][0]
        raise errors.BatchRefused(
            f"Transaction {index} was refused: {exc.detail}",
            extra={"index": index, "reason": exc.code},
        ) from exc

    for index, refusal in early.items():
        refused_item = BatchItemResult(index=index, status="refused", error=problem_body(refusal))
        rendered[index] = refused_item.model_dump_json()
    for (index, _), outcome in zip(valid, outcomes, strict=True):
        if rendered[index] is None:  # refused by the engine before any write: not rendered yet
            rendered[index] = batch_item_result(index, outcome).model_dump_json()
    posted = sum(1 for outcome in outcomes if outcome.posted is not None)
    return batch_result_json(data.atomic, posted, len(requests) - posted, rendered)


def batch_item_result(index: int, outcome: PostingOutcome) -> BatchItemResult:
    if outcome.posted is not None:
        return BatchItemResult.model_construct(
            index=index, status="posted", transaction=transaction_read(outcome.posted), error=None
        )
    assert outcome.error is not None
    return BatchItemResult(index=index, status="refused", error=problem_body(outcome.error))


def batch_result_json(
    atomic: bool, posted: int, refused: int, items: Sequence[str | None]
) -> RenderedJSON:
    """``BatchResult(...).model_dump_json()`` for items already rendered one by one (the same
    text: the model's own serialiser writes all but the list)."""
    empty = BatchResult(atomic=atomic, posted=posted, refused=refused, results=[])
    head = empty.model_dump_json()
    assert head.endswith(_NO_RESULTS), "results must stay BatchResult's last field"
    return RenderedJSON(f'{head[: -len(_NO_RESULTS)]}"results":[{",".join(filter(None, items))}]}}')


_NO_RESULTS = '"results":[]}'


async def reverse_transaction(
    session: AsyncSession, access: CommunityAccess, original: Transaction, memo: str
) -> TransactionRead:
    poster = require_ledger_writer(access)
    if original.kind == TransactionKind.reversal:
        raise errors.ReversalNotReversible(
            "Post a new transaction instead of reversing a reversal."
        )
    if await _reversal_of(session, original.id) is not None:
        raise errors.AlreadyReversed(f"Transaction {original.id} has already been reversed.")
    lines = (
        await session.execute(
            select(Entry.account_id, Entry.amount).where(Entry.transaction_id == original.id)
        )
    ).all()
    request = PostingRequest(
        kind=TransactionKind.reversal,
        lines=tuple((account_id, -amount) for account_id, amount in lines),
        occurred_on=utcnow().date(),
        memo=memo or f"Reversal of {original.id}",
        details={"reverses": str(original.id)},
        reverses_id=original.id,
    )
    try:
        posted = await post_transaction(session, access.community, request, poster=poster)
    except IntegrityError as exc:  # a concurrent reversal won the race on the unique index
        raise errors.AlreadyReversed(
            f"Transaction {original.id} has already been reversed."
        ) from exc
    return transaction_read(posted)


async def _reversal_of(session: AsyncSession, transaction_id: uuid.UUID) -> uuid.UUID | None:
    return await session.scalar(
        select(Transaction.id).where(Transaction.reverses_id == transaction_id)
    )


def _cursor_value(cursor: str, kind: Callable[[Any], CursorValue]) -> CursorValue:
    values = decode_cursor(cursor)
    try:
        return kind(values[0])
    except (IndexError, TypeError, ValueError) as exc:
        raise InvalidCursor("The cursor is not one this server issued.") from exc


# --- reading transactions -----------------------------------------------------------------


async def transaction_reads(
    session: AsyncSession, transactions: Sequence[Transaction]
) -> list[TransactionRead]:
    ids = [t.id for t in transactions]
    if not ids:
        return []
    entries: dict[uuid.UUID, list[EntryRead]] = {i: [] for i in ids}
    rows = await session.execute(
        select(Entry).where(Entry.transaction_id.in_(ids)).order_by(Entry.id)
    )
    for entry in rows.scalars():
        entries[entry.transaction_id].append(
            EntryRead(
                id=entry.id,
                account_id=entry.account_id,
                minutes=entry.amount,
                balance_after=entry.balance_after,
                account_version=entry.account_version,
            )
        )
    reversals = dict(
        (
            await session.execute(
                select(Transaction.reverses_id, Transaction.id).where(
                    Transaction.reverses_id.in_(ids)
                )
            )
        ).all()
    )
    return [
        TransactionRead(
            id=t.id,
            community_id=t.community_id,
            kind=TransactionKind(t.kind),
            memo=t.memo,
            occurred_on=t.occurred_on,
            details=t.details,
            posted_at=t.posted_at,
            posted_by_user_id=t.posted_by_user_id,
            posted_by_client_id=t.posted_by_client_id,
            reverses_id=t.reverses_id,
            reversed_by_id=reversals.get(t.id),
            content_hash=t.content_hash,
            entries=entries[t.id],
        )
        for t in transactions
    ]


async def list_transactions(
    session: AsyncSession,
    community: Community,
    params: PageParams,
    *,
    account_id: str | None,
    kind: TransactionKind | None,
    posted_from: datetime | None,
    posted_to: datetime | None,
    occurred_from: date | None,
    occurred_to: date | None,
) -> tuple[list[TransactionRead], str | None]:
    stmt = select(Transaction).where(Transaction.community_id == community.id)
    if account_id is not None:
        parsed = parse_id(account_id)
        stmt = stmt.where(
            Transaction.id.in_(select(Entry.transaction_id).where(Entry.account_id == parsed))
        )
    if kind is not None:
        stmt = stmt.where(Transaction.kind == kind.value)
    if posted_from is not None:
        stmt = stmt.where(Transaction.posted_at >= posted_from)
    if posted_to is not None:
        stmt = stmt.where(Transaction.posted_at < posted_to)
    if occurred_from is not None:
        stmt = stmt.where(Transaction.occurred_on >= occurred_from)
    if occurred_to is not None:
        stmt = stmt.where(Transaction.occurred_on <= occurred_to)
    if params.cursor is not None:
        stmt = stmt.where(Transaction.id < _cursor_value(params.cursor, uuid.UUID))
    stmt = stmt.order_by(Transaction.id.desc()).limit(params.limit + 1)
    rows = list((await session.scalars(stmt)).all())
    next_cursor = None
    if len(rows) > params.limit:
        rows = rows[: params.limit]
        next_cursor = encode_cursor([rows[-1].id])
    return await transaction_reads(session, rows), next_cursor


# --- statements ---------------------------------------------------------------------------


def _statement_query(
    account: Account,
    posted_from: datetime | None,
    posted_to: datetime | None,
    as_of: datetime | None,
) -> Select[Entry, Transaction]:
    stmt = (
        select(Entry, Transaction)
        .join(Transaction, Transaction.id == Entry.transaction_id)
        .where(Entry.account_id == account.id)
    )
    if posted_from is not None:
        stmt = stmt.where(Entry.posted_at >= posted_from)
    if posted_to is not None:
        stmt = stmt.where(Entry.posted_at < posted_to)
    if as_of is not None:
        stmt = stmt.where(Entry.posted_at <= as_of)
    return stmt


async def balance_as_of(session: AsyncSession, account: Account, as_of: datetime) -> int:
    """The balance at an instant: the running balance of the last entry posted by then."""
    balance = await session.scalar(
        select(Entry.balance_after)
        .where(Entry.account_id == account.id, Entry.posted_at <= as_of)
        .order_by(Entry.account_version.desc())
        .limit(1)
    )
    return int(balance or 0)


async def statement(
    session: AsyncSession,
    account: Account,
    params: PageParams,
    *,
    posted_from: datetime | None,
    posted_to: datetime | None,
    as_of: datetime | None,
) -> Statement:
    stmt = _statement_query(account, posted_from, posted_to, as_of)
    if params.cursor is not None:
        stmt = stmt.where(Entry.account_version < _cursor_value(params.cursor, int))
    stmt = stmt.order_by(Entry.account_version.desc()).limit(params.limit + 1)
    rows = (await session.execute(stmt)).all()
    next_cursor = None
    if len(rows) > params.limit:
        rows = rows[: params.limit]
        next_cursor = encode_cursor([rows[-1][0].account_version])
    lines = await _statement_lines(session, account, rows)
    balance = account.balance if as_of is None else await balance_as_of(session, account, as_of)
    return Statement(
        account_id=account.id, balance=balance, as_of=as_of, items=lines, next_cursor=next_cursor
    )


async def _statement_lines(
    session: AsyncSession, account: Account, rows: Sequence[Any]
) -> list[StatementLine]:
    transaction_ids = [transaction.id for _, transaction in rows]
    others: dict[uuid.UUID, list[Counterparty]] = {t: [] for t in transaction_ids}
    if transaction_ids:
        counter_rows = await session.execute(
            select(
                Entry.transaction_id,
                Entry.account_id,
                Entry.amount,
                Account.name,
                Account.member_id,
            )
            .join(Account, Account.id == Entry.account_id)
            .where(and_(Entry.transaction_id.in_(transaction_ids), Entry.account_id != account.id))
            .order_by(Entry.id)
        )
        for transaction_id, account_id, amount, name, member_id in counter_rows:
            others[transaction_id].append(
                Counterparty(account_id=account_id, name=name, member_id=member_id, minutes=amount)
            )
    return [
        StatementLine(
            entry_id=entry.id,
            transaction_id=transaction.id,
            posted_at=entry.posted_at,
            occurred_on=transaction.occurred_on,
            kind=TransactionKind(transaction.kind),
            memo=transaction.memo,
            minutes=entry.amount,
            balance_after=entry.balance_after,
            account_version=entry.account_version,
            counterparties=others[transaction.id],
        )
        for entry, transaction in rows
    ]


CSV_COLUMNS = [
    "posted_at",
    "occurred_on",
    "transaction_id",
    "kind",
    "memo",
    "minutes",
    "balance_after",
    "counterparties",
]


async def statement_csv(
    sessionmaker: async_sessionmaker[AsyncSession],
    account: Account,
    *,
    posted_from: datetime | None,
    posted_to: datetime | None,
    as_of: datetime | None,
    chunk: int = 500,
) -> AsyncIterator[str]:
    """The whole statement (newest first) as CSV, streamed a chunk of entries at a time.

    The body is sent after the request's unit of work has ended, so each chunk is read in a
    short session of its own: holding the request's session open while a slow client reads
    would keep a connection checked out (and, on SQLite, the write lock held). Entries are
    append-only and paged by ``account_version``, so the chunks still form one consistent
    statement.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    before: int | None = None
    while True:
        stmt = _statement_query(account, posted_from, posted_to, as_of)
        if before is not None:
            stmt = stmt.where(Entry.account_version < before)
        async with sessionmaker() as session:
            # A read that never waits for (or holds back) a writer on SQLite.
            await session.connection(execution_options={READ_SNAPSHOT_OPTION: True})
            rows = (
                await session.execute(stmt.order_by(Entry.account_version.desc()).limit(chunk))
            ).all()
            lines = await _statement_lines(session, account, rows) if rows else []
        if not rows:
            return
        buffer.seek(0)
        buffer.truncate()
        for line in lines:
            writer.writerow(
                [
                    line.posted_at.isoformat(),
                    line.occurred_on.isoformat(),
                    line.transaction_id,
                    line.kind.value,
                    _csv_safe(line.memo),
                    line.minutes,
                    line.balance_after,
                    "; ".join(f"{_csv_safe(c.name)} ({c.minutes:+d})" for c in line.counterparties),
                ]
            )
        yield buffer.getvalue()
        before = rows[-1][0].account_version


def _csv_safe(value: str) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas: neutralise them."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value

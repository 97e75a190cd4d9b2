"""The posting engine: the only code that writes entries.

A posting is a balanced set of signed minute amounts on accounts of one community. The engine

1. checks the shape (>= 2 entries, none zero, each within bounds, no account twice, sum 0);
2. locks the affected accounts in ascending id order (``SELECT ... FOR UPDATE`` on PostgreSQL;
   SQLite already runs one writer at a time via ``BEGIN IMMEDIATE``), so concurrent postings
   never deadlock and never read a stale balance;
3. applies each posting to the locked balances in memory, refusing one that takes an account
   past a limit (unless it moves an out-of-range balance toward its range);
4. writes transactions, entries and account totals in one statement on PostgreSQL (arrays
   through ``unnest``) and three bulk statements on SQLite, ``WRITE_CHUNK`` postings at a
   time: the database writes one chunk while the engine applies the next.

Many postings go through one call (the batch route, imports), so a thousand transfers cost
a handful of statements, not three thousand. On PostgreSQL a single posting from the HTTP
route takes ``app/ledger/single_post.py`` instead, which states these rules again in one
database function. On PostgreSQL a deadlock or serialization failure rolls
back to a savepoint and the engine retries a bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Executable, Table, bindparam, func, insert, literal, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.clock import utcnow
from app.core.ids import new_ids
from app.ledger import errors
from app.models import Account, Community, Entry, Transaction
from app.models.ledger import AccountStatus, TransactionKind

MAX_ENTRY_MINUTES = 10_000 * 60  # 10,000 hours: larger is a typo, not a trade
MAX_ENTRIES_PER_TRANSACTION = 100
RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock_detected, serialization_failure
MAX_ATTEMPTS = 4
# Postings per write statement in a batch: the database writes one chunk while this process
# applies the next (see _lock_apply_write). The first chunk is smaller, so the database starts
# sooner.
FIRST_CHUNK = 50
WRITE_CHUNK = 200

_accounts = cast(Table, Account.__table__)
_entries = cast(Table, Entry.__table__)
_transactions = cast(Table, Transaction.__table__)


@dataclass(frozen=True)
class Poster:
    """Who posts: a user, a partner client, or the system (both None)."""

    user_id: uuid.UUID | None = None
    client_id: uuid.UUID | None = None


@dataclass(frozen=True)
class PostingRequest:
    kind: TransactionKind
    lines: tuple[tuple[uuid.UUID, int], ...]  # (account id, signed minutes)
    occurred_on: date
    memo: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    reverses_id: uuid.UUID | None = None


@dataclass(frozen=True)
class PostedEntry:
    account_id: uuid.UUID
    minutes: int
    balance_after: int
    account_version: int


@dataclass(frozen=True)
class PostedTransaction:
    id: uuid.UUID
    community_id: uuid.UUID
    kind: TransactionKind
    memo: str
    occurred_on: date
    details: Mapping[str, Any]
    posted_at: datetime
    posted_by_user_id: uuid.UUID | None
    posted_by_client_id: uuid.UUID | None
    reverses_id: uuid.UUID | None
    content_hash: str
    entries: tuple[PostedEntry, ...]


@dataclass(frozen=True)
class PostingOutcome:
    """One request's result in a batch: exactly one of ``posted`` and ``error`` is set."""

    index: int
    posted: PostedTransaction | None = None
    error: errors.LedgerError | None = None


@dataclass
class AccountState:
    # Built positionally from the lock's rows (account_states): the lock statements select
    # these columns in this order, here and in app/ledger/single_post_sqlite.py.
    id: uuid.UUID
    status: str
    min_balance: int
    max_balance: int
    balance: int
    version: int
    earned_total: int
    spent_total: int
    updated_at: datetime  # every posting sets it to its own time


def check_shape(request: PostingRequest) -> None:
    """Refuse a posting that could never be valid, whatever the balances."""
    lines = request.lines
    if len(lines) < 2:
        raise errors.TooFewEntries("A transaction needs at least two entries.")
    if len(lines) > MAX_ENTRIES_PER_TRANSACTION:
        raise errors.AmountOutOfRange(
            f"At most {MAX_ENTRIES_PER_TRANSACTION} entries per transaction."
        )
    seen: set[uuid.UUID] = set()
    for account_id, minutes in lines:
        if type(minutes) is not int:  # bool and float are refused too: minutes are integers
            raise errors.AmountOutOfRange("Minutes must be whole numbers.")
        if minutes == 0:
            raise errors.ZeroAmount(f"The entry on account {account_id} is zero.")
        if abs(minutes) > MAX_ENTRY_MINUTES:
            raise errors.AmountOutOfRange(
                f"The entry on account {account_id} is {minutes} minutes; the most is "
                f"{MAX_ENTRY_MINUTES} (10,000 hours)."
            )
        if account_id in seen:
            raise errors.DuplicateAccount(f"Account {account_id} appears more than once.")
        seen.add(account_id)
    total = sum(minutes for _, minutes in lines)
    if total != 0:
        raise errors.Unbalanced(f"The entries sum to {total} minutes; they must sum to 0.")


def content_hash(
    transaction_id: uuid.UUID,
    community_id: uuid.UUID,
    request: PostingRequest,
) -> str:
    """A digest of what the transaction says, stored with it (seals chain these). Lines are
    taken in the order of their account ids as text, which is the ids' own order (fixed-width
    lower-case hex): sorted by the ids, without formatting each one twice."""
    parts = [
        str(transaction_id),
        str(community_id),
        request.kind.value,
        request.occurred_on.isoformat(),
        str(request.reverses_id or ""),
        request.memo,
        *(f"{account}:{minutes}" for account, minutes in sorted(request.lines, key=_account)),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


_account = itemgetter(0)


async def post_transaction(
    session: AsyncSession, community: Community, request: PostingRequest, *, poster: Poster
) -> PostedTransaction:
    """Post one transaction or raise the reason it was refused."""
    outcome = (await post_transactions(session, community, [request], poster=poster, atomic=True))[
        0
    ]
    assert outcome.posted is not None
    return outcome.posted


async def post_transactions(
    session: AsyncSession,
    community: Community,
    requests: Sequence[PostingRequest],
    *,
    poster: Poster,
    atomic: bool,
    while_writing: Callable[[Sequence[PostingOutcome]], None] | None = None,
) -> list[PostingOutcome]:
    """Post many transactions in order.

    ``atomic``: the first refusal raises and nothing is written. Otherwise each refused request
    is reported in its outcome and the others are posted.

    ``while_writing`` is given the outcomes of each chunk of requests that passed the shape
    check while the database writes that chunk (a caller renders its response there, for no
    extra wall time). They become final only when this call returns: a later refusal of an
    atomic call discards them, and a retry after a deadlock gives every request again.
    """
    outcomes: dict[int, PostingOutcome] = {}
    valid: list[tuple[int, PostingRequest]] = []
    for index, request in enumerate(requests):
        try:
            check_shape(request)
        except errors.LedgerError as exc:
            if atomic:
                exc.index = index
                raise
            outcomes[index] = PostingOutcome(index=index, error=exc)
        else:
            valid.append((index, request))
    if not valid:
        return [outcomes[i] for i in range(len(requests))]

    is_postgres = session.get_bind().dialect.name == "postgresql"
    # A single posting locks its accounts in one ordered statement, so it cannot deadlock with
    # another posting; it runs without a savepoint (two round trips saved on the hot path). A
    # batch runs in a savepoint and is retried on deadlock or serialization failure. Should a
    # single posting ever meet one, the client gets 503 ledger_busy and retries with its key.
    use_savepoint = is_postgres and len(valid) > 1
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            if use_savepoint:
                async with session.begin_nested():
                    posted = await _lock_apply_write(
                        session, community, valid, poster, atomic, while_writing
                    )
            else:
                posted = await _lock_apply_write(
                    session, community, valid, poster, atomic, while_writing
                )
            break
        except IntegrityError:
            raise
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
            if sqlstate not in RETRYABLE_SQLSTATES or attempt == MAX_ATTEMPTS or not use_savepoint:
                if sqlstate in RETRYABLE_SQLSTATES:
                    raise ledger_busy() from exc
                raise
    outcomes.update(posted)
    return [outcomes[i] for i in range(len(requests))]


async def _lock_apply_write(
    session: AsyncSession,
    community: Community,
    requests: list[tuple[int, PostingRequest]],
    poster: Poster,
    atomic: bool,
    while_writing: Callable[[Sequence[PostingOutcome]], None] | None,
) -> dict[int, PostingOutcome]:
    """Lock, then apply and write ``WRITE_CHUNK`` postings at a time.

    Each chunk's write is sent before the next chunk is applied, so the database writes one
    chunk while this process applies the next (and ``while_writing`` renders the one in
    flight): on two cores a 1,000-posting batch costs about the longer of the two, not their
    sum. One statement is in flight at a time (one connection), every chunk in the caller's
    transaction: a refusal in a later chunk of an atomic batch rolls the earlier ones back.
    """
    # Locked in ascending id order by the statement itself (ORDER BY id), not by this list.
    account_ids = list({account for _, r in requests for account, _ in r.lines})
    states = await _lock_accounts(session, community, account_ids)

    outcomes: dict[int, PostingOutcome] = {}
    posted_at = posting_time(utcnow(), states.values())
    transaction_ids = iter(new_ids(len(requests)))
    is_postgres = session.get_bind().dialect.name == "postgresql"
    in_flight: asyncio.Task[None] | None = None
    try:
        for start, end in _chunks(len(requests)):
            chunk, written = _apply_chunk(
                requests[start:end], states, community, poster, atomic, posted_at, transaction_ids
            )
            # The statements carry the accounts' states as of this chunk's end: taken now,
            # before the next chunk changes them, and while the last chunk is being written.
            statements = _write_statements(is_postgres, written, states, posted_at)
            if in_flight is not None:
                await in_flight
                in_flight = None
            if statements:
                in_flight = asyncio.create_task(_execute(session, statements))
                await asyncio.sleep(0)  # let it send before this process gets busy again
            if while_writing is not None:
                while_writing(chunk)
            outcomes.update((outcome.index, outcome) for outcome in chunk)
        if in_flight is not None:
            await in_flight
            in_flight = None
    finally:
        if in_flight is not None:
            # A refusal (or an error) while a chunk was being written: the write must finish
            # before the caller rolls back on this connection. Its own failure, if any, is
            # moot: the caller's exception rolls the whole call back.
            with contextlib.suppress(Exception):
                await in_flight
    return outcomes


def _apply_chunk(
    requests: Sequence[tuple[int, PostingRequest]],
    states: Mapping[uuid.UUID, AccountState],
    community: Community,
    poster: Poster,
    atomic: bool,
    posted_at: datetime,
    transaction_ids: Iterator[uuid.UUID],
) -> tuple[list[PostingOutcome], list[PostedTransaction]]:
    """Apply ``requests`` to the locked states, in order: each one's outcome, and the
    transactions to write. An atomic call's first refusal raises, naming its request."""
    outcomes: list[PostingOutcome] = []
    written: list[PostedTransaction] = []
    for index, request in requests:
        try:
            check_accounts_known(request, states, community.slug)
            entries = apply_posting(request, states)
        except errors.LedgerError as exc:
            if atomic:
                exc.index = index
                raise
            outcomes.append(PostingOutcome(index=index, error=exc))
            continue
        transaction_id = next(transaction_ids)
        posted = PostedTransaction(
            id=transaction_id,
            community_id=community.id,
            kind=request.kind,
            memo=request.memo,
            occurred_on=request.occurred_on,
            details=dict(request.details),
            posted_at=posted_at,
            posted_by_user_id=poster.user_id,
            posted_by_client_id=poster.client_id,
            reverses_id=request.reverses_id,
            content_hash=content_hash(transaction_id, community.id, request),
            entries=entries,
        )
        outcomes.append(PostingOutcome(index=index, posted=posted))
        written.append(posted)
    return outcomes, written


def _chunks(count: int) -> Iterator[tuple[int, int]]:
    """``FIRST_CHUNK`` postings, then ``WRITE_CHUNK`` at a time, as (start, end) slices."""
    start, size = 0, FIRST_CHUNK
    while start < count:
        yield start, min(count, start + size)
        start, size = start + size, WRITE_CHUNK


_LOCK_ACCOUNTS_POSTGRES = text(
    """
    SELECT a.id, a.status, coalesce(a.min_balance, c.default_min_balance),
           coalesce(a.max_balance, c.default_max_balance), a.balance, a.version,
           a.earned_total, a.spent_total, a.updated_at
    FROM accounts AS a JOIN communities AS c ON c.id = a.community_id
    WHERE a.id = ANY(CAST(:ids AS uuid[])) AND a.community_id = CAST(:community AS uuid)
    ORDER BY a.id
    FOR UPDATE OF a FOR SHARE OF c
    """
)


async def _lock_accounts(
    session: AsyncSession, community: Community, account_ids: list[uuid.UUID]
) -> dict[uuid.UUID, AccountState]:
    """Lock the community's accounts among ``account_ids`` in ascending id order and read
    their state (another community's account is, to this one, no account: neither read nor
    locked).

    On PostgreSQL the community row is share-locked in the same statement, so its default
    limits cannot change under a posting (a PATCH waits for it, or it waits for the PATCH).
    One array parameter keeps one prepared statement whatever the number of accounts.
    """
    if session.get_bind().dialect.name == "postgresql":
        rows = await session.execute(
            _LOCK_ACCOUNTS_POSTGRES, {"ids": account_ids, "community": community.id}
        )
    else:
        c = _accounts.c
        rows = await session.execute(
            select(
                c.id,
                c.status,
                func.coalesce(c.min_balance, literal(community.default_min_balance)),
                func.coalesce(c.max_balance, literal(community.default_max_balance)),
                c.balance,
                c.version,
                c.earned_total,
                c.spent_total,
                c.updated_at,
            )
            .where(c.id.in_(account_ids), c.community_id == community.id)
            .order_by(c.id)
            .with_for_update()
        )
    return account_states(rows)


def account_states(rows: Iterable[Sequence[Any]]) -> dict[uuid.UUID, AccountState]:
    """The locked accounts' states from rows of (id, status, min balance, max balance, balance,
    version, earned, spent, updated at), the limits those in force (the account's own, else
    the community's default).

    Positional: a batch locks up to 2,000 accounts, and named access on result rows or
    keyword arguments cost more than the query's own decoding.
    """
    return {row[0]: AccountState(*row) for row in rows}


def posting_time(now: datetime, accounts: Iterable[AccountState]) -> datetime:
    """When postings on these locked accounts happen: now, read once they are locked, and never
    earlier than the accounts' last change. An account's entries then run in time order as in
    version order, so a balance ``as_of`` an instant is the one its statement shows, even if the
    clock steps back or another host's clock runs ahead."""
    return max(now, max((account.updated_at for account in accounts), default=now))


def check_accounts_known(
    request: PostingRequest, states: Mapping[uuid.UUID, AccountState], community_slug: str
) -> None:
    """Refuse a posting naming an account this community does not have.

    Checked per request, not per call: in a non-atomic batch one item naming an unknown
    account is that item's refusal, not the whole batch's.
    """
    missing = [str(account_id) for account_id, _ in request.lines if account_id not in states]
    if missing:
        raise account_not_found(missing, community_slug)


def ledger_busy() -> errors.LedgerBusy:
    return errors.LedgerBusy("The ledger stayed busy; retry shortly.")


def account_not_found(missing: Sequence[str], slug: str) -> errors.AccountNotFound:
    return errors.AccountNotFound(
        f"No account {missing[0]} in community '{slug}'.", extra={"account_ids": list(missing)}
    )


def account_closed(account_id: object) -> errors.AccountClosed:
    return errors.AccountClosed(f"Account {account_id} is closed.")


def insufficient_balance(
    account_id: object, balance: int, after: int, limit: int
) -> errors.InsufficientBalance:
    return errors.InsufficientBalance(
        f"Account {account_id} would fall to {after} minutes; its limit is {limit}.",
        extra={"account_id": str(account_id), "balance": balance, "limit": limit},
    )


def over_balance_cap(
    account_id: object, balance: int, after: int, limit: int
) -> errors.OverBalanceCap:
    return errors.OverBalanceCap(
        f"Account {account_id} would rise to {after} minutes; its cap is {limit}.",
        extra={"account_id": str(account_id), "balance": balance, "limit": limit},
    )


def apply_posting(
    request: PostingRequest, states: Mapping[uuid.UUID, AccountState]
) -> tuple[PostedEntry, ...]:
    """Apply ``request`` to the locked accounts' states and return its entries, or raise the
    reason it is refused, leaving every state as it was."""
    new_balances = _apply_limits(request, states)
    entries = []
    for account_id, minutes in request.lines:
        state = states[account_id]
        state.balance = new_balances[account_id]
        state.version += 1
        if minutes > 0:
            state.earned_total += minutes
        else:
            state.spent_total -= minutes
        entries.append(PostedEntry(account_id, minutes, state.balance, state.version))
    return tuple(entries)


def _apply_limits(
    request: PostingRequest, states: Mapping[uuid.UUID, AccountState]
) -> dict[uuid.UUID, int]:
    """The balances after ``request``, or the reason it is refused.

    A limit only refuses movement *away* from the range: spending below ``min_balance`` or
    earning above ``max_balance``. A balance already outside (limits tightened later) may still
    move back toward its range.
    """
    new_balances: dict[uuid.UUID, int] = {}
    for account_id, minutes in request.lines:
        state = states[account_id]
        if state.status != AccountStatus.open:
            raise account_closed(account_id)
        after = state.balance + minutes
        if minutes < 0 and after < state.min_balance:
            raise insufficient_balance(account_id, state.balance, after, state.min_balance)
        if minutes > 0 and after > state.max_balance:
            raise over_balance_cap(account_id, state.balance, after, state.max_balance)
        new_balances[account_id] = after
    return new_balances


_WRITE_POSTGRES = text(
    """
    WITH new_transactions AS (
        INSERT INTO transactions (id, community_id, kind, memo, occurred_on, details, posted_at,
                                  posted_by_user_id, posted_by_client_id, reverses_id, content_hash)
        SELECT t.id, CAST(:community AS uuid), t.kind, t.memo, t.occurred_on, t.details,
               CAST(:posted_at AS timestamptz), CAST(:user_id AS uuid), CAST(:client_id AS uuid),
               t.reverses_id, t.content_hash
        FROM unnest(
            CAST(:t_id AS uuid[]), CAST(:t_kind AS varchar[]), CAST(:t_memo AS varchar[]),
            CAST(:t_occurred AS date[]), CAST(:t_details AS jsonb[]), CAST(:t_reverses AS uuid[]),
            CAST(:t_hash AS varchar[]))
            AS t(id, kind, memo, occurred_on, details, reverses_id, content_hash)
        RETURNING 1
    ), new_entries AS (
        INSERT INTO entries (transaction_id, account_id, amount, balance_after, account_version,
                             posted_at)
        SELECT e.*, CAST(:posted_at AS timestamptz)
        FROM unnest(
            CAST(:e_transaction AS uuid[]), CAST(:e_account AS uuid[]), CAST(:e_amount AS bigint[]),
            CAST(:e_balance AS bigint[]), CAST(:e_version AS bigint[])) AS e
        RETURNING 1
    )
    UPDATE accounts AS a
    SET balance = v.balance, version = v.version, earned_total = v.earned,
        spent_total = v.spent, updated_at = CAST(:posted_at AS timestamptz)
    FROM unnest(CAST(:a_id AS uuid[]), CAST(:a_balance AS bigint[]), CAST(:a_version AS bigint[]),
                CAST(:a_earned AS bigint[]), CAST(:a_spent AS bigint[]))
         AS v(id, balance, version, earned, spent)
    WHERE a.id = v.id
    """
)


Statement = tuple[Executable, dict[str, Any] | list[dict[str, Any]]]


async def _execute(session: AsyncSession, statements: Sequence[Statement]) -> None:
    for statement, parameters in statements:
        await session.execute(statement, parameters)


def _write_statements(
    is_postgres: bool,
    posted: Sequence[PostedTransaction],
    states: Mapping[uuid.UUID, AccountState],
    posted_at: datetime,
) -> list[Statement]:
    """The statements that write ``posted`` and the totals of the accounts they touch, with
    the parameters taken now: on PostgreSQL one statement (arrays through ``unnest``: one
    round trip, one prepared statement for any size); elsewhere three bulk statements. None
    when nothing was posted."""
    if not posted:
        return []
    accounts = list(
        {e.account_id: states[e.account_id] for t in posted for e in t.entries}.values()
    )
    if is_postgres:
        first = posted[0]
        entries = [(t.id, e) for t in posted for e in t.entries]
        return [
            (
                _WRITE_POSTGRES,
                {
                    # One call's postings share community, time and poster: sent once.
                    "community": first.community_id,
                    "posted_at": posted_at,
                    "user_id": first.posted_by_user_id,
                    "client_id": first.posted_by_client_id,
                    "t_id": [t.id for t in posted],
                    "t_kind": [t.kind.value for t in posted],
                    "t_memo": [t.memo for t in posted],
                    "t_occurred": [t.occurred_on for t in posted],
                    "t_details": [json.dumps(t.details) for t in posted],
                    "t_reverses": [t.reverses_id for t in posted],
                    "t_hash": [t.content_hash for t in posted],
                    "e_transaction": [transaction_id for transaction_id, _ in entries],
                    "e_account": [e.account_id for _, e in entries],
                    "e_amount": [e.minutes for _, e in entries],
                    "e_balance": [e.balance_after for _, e in entries],
                    "e_version": [e.account_version for _, e in entries],
                    "a_id": [s.id for s in accounts],
                    "a_balance": [s.balance for s in accounts],
                    "a_version": [s.version for s in accounts],
                    "a_earned": [s.earned_total for s in accounts],
                    "a_spent": [s.spent_total for s in accounts],
                },
            )
        ]
    c = _accounts.c
    return [
        (
            insert(_transactions),
            [
                {
                    "id": t.id,
                    "community_id": t.community_id,
                    "kind": t.kind.value,
                    "memo": t.memo,
                    "occurred_on": t.occurred_on,
                    "details": dict(t.details),
                    "posted_at": posted_at,
                    "posted_by_user_id": t.posted_by_user_id,
                    "posted_by_client_id": t.posted_by_client_id,
                    "reverses_id": t.reverses_id,
                    "content_hash": t.content_hash,
                }
                for t in posted
            ],
        ),
        (
            insert(_entries),
            [
                {
                    "transaction_id": t.id,
                    "account_id": e.account_id,
                    "amount": e.minutes,
                    "balance_after": e.balance_after,
                    "account_version": e.account_version,
                    "posted_at": posted_at,
                }
                for t in posted
                for e in t.entries
            ],
        ),
        (
            update(_accounts)
            .where(c.id == bindparam("b_id"))
            .values(
                balance=bindparam("b_balance"),
                version=bindparam("b_version"),
                earned_total=bindparam("b_earned"),
                spent_total=bindparam("b_spent"),
                updated_at=bindparam("b_updated_at"),
            ),
            [
                {
                    "b_id": s.id,
                    "b_balance": s.balance,
                    "b_version": s.version,
                    "b_earned": s.earned_total,
                    "b_spent": s.spent_total,
                    "b_updated_at": posted_at,
                }
                for s in accounts
            ],
        ),
    ]

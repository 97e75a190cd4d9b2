"""One transaction posted in one call to the database.

``POST /v1/communities/{community_id}/transactions`` is the ledger's hot path. Through the
general route (the guard dependencies, ``run_idempotent`` and the posting engine) it takes
eight statements, each a round trip from the event loop (to PostgreSQL's socket, or to
aiosqlite's thread). Here the same work is one call, in one database transaction:

1. the token's user is active, or its client not revoked (``get_principal``);
2. the caller belongs to the community, or is a platform admin, or is the community's client
   with ``ledger:write`` (``authorise``);
3. the ``Idempotency-Key``: stored record, replay or refusal (``run_idempotent``);
4. the caller may post directly: coordinator, admin or client (``require_ledger_writer``);
5. the accounts locked in ascending id order, checked and written (the posting engine), and
   the response stored with the key.

Everything that needs no database is done first, by the general path's own code
(``prepare``): the request's shape (a refusal is only raised once steps 1-4 have passed, so
the order of refusals is the general path's), the transaction id and its content hash.

- PostgreSQL (``PostgresSinglePoster``): the database function ``ledger_post_transaction``
  (migrations 0008 and 0011) states steps 1-5 in PL/pgSQL, with an advisory lock on the key.
  A worker has at most ``posting_concurrency`` calls in the database at once, each on one of
  the poster's own connections. The response is
  rendered by pydantic up to its entries, which the function splices in with their balances.
- SQLite (``app/ledger/single_post_sqlite.py``): steps 1-5 run as plain statements on the
  poster's own connection, in one hop to its thread, applying the engine's own rules
  (``account_states``, ``apply_posting``) to the rows it reads.

A posting is stamped when its turn comes, and never earlier than its accounts' last change
(``posting_time``): should another posting on them have been written meanwhile, it takes that
one's time (on PostgreSQL the function then renders that time into the response itself).

Each refusal is built by the same factory the general path uses, so codes and texts match;
the ledger's test suite runs on both databases.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response

from app.access.community import (
    CommunityRef,
    client_of_another_community,
    community_not_found,
    membership_inactive,
    not_a_member,
    scope_needed,
)
from app.access.principal import TokenSubject, client_revoked, user_gone
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.errors import DomainError
from app.core.ids import new_id
from app.ledger.idempotency import (
    RETENTION,
    IdempotencyKey,
    Outcome,
    key_in_progress,
    key_reused,
    key_taken_concurrently,
    lock_id,
)
from app.ledger.idempotent_http import idempotent_reply, request_key
from app.ledger.posting import (
    PostedTransaction,
    PostingRequest,
    account_closed,
    account_not_found,
    check_shape,
    content_hash,
    insufficient_balance,
    ledger_busy,
    over_balance_cap,
)
from app.ledger.schemas import TransactionCreate
from app.ledger.service import (
    not_a_ledger_writer,
    posting_request,
    transaction_read,
)

WRITE_SCOPE = "ledger:write"
_CALL = """
    SELECT outcome, detail, response_status, response_body
    FROM ledger_post_transaction($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                                 $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)
"""
_ENTRIES_LAST = '"entries":[]}'
_BUSY_SQLSTATES = {"40P01", "40001"}  # deadlock_detected, serialization_failure
_KEY_CONSTRAINT = "uq_idempotency_records_principal_key"
_POSTED_AT = '"posted_at":"'
# Errors after which the server closes the connection (it may not have been noticed yet).
_CONNECTION_ENDING = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
# The function's statements are key look-ups and writes whose best plans never depend on the
# values. Left to choose, PostgreSQL kept planning some of them afresh on every call (a custom
# plan's estimate beat the generic one's), and planning was about a fifth of the call's
# database CPU (pgbench, 8 clients: 829 -> 670 us a call; forcing custom plans: 1,384 us).
POSTER_SESSION_SETTINGS = {"plan_cache_mode": "force_generic_plan"}
# As the general pool's pool_recycle: before servers or proxies drop an idle connection.
CONNECTION_RECYCLE_SECONDS = 1800.0


@dataclass(frozen=True)
class SinglePosting:
    """One posting as the service prepares it before asking the database anything: who asks,
    where, under which key, and either the transaction to write (its entries still to come:
    they need the locked balances) or the request's own fault, which is raised only once
    access and key have been checked, so refusals come in the general path's order."""

    subject: TokenSubject
    community: CommunityRef
    key: IdempotencyKey
    data: TransactionCreate
    now: datetime
    request: PostingRequest | None
    transaction: PostedTransaction | None  # None exactly when ``refusal`` is set
    refusal: DomainError | None

    def stamped(self, now: datetime) -> SinglePosting:
        """The posting as made at ``now`` (the content hash does not include the time)."""
        transaction = self.transaction
        if transaction is not None:
            transaction = replace(transaction, posted_at=now)
        return replace(self, now=now, transaction=transaction)


def prepare(
    subject: TokenSubject, community: CommunityRef, key: IdempotencyKey, data: TransactionCreate
) -> SinglePosting:
    """Everything about the posting that needs no database, done by the general path's code:
    the shape checks, the transaction's id and its content hash."""
    now = utcnow()
    try:
        request = posting_request(data, now.date())
    except DomainError as exc:
        return SinglePosting(subject, community, key, data, now, None, None, exc)
    try:
        check_shape(request)
    except DomainError as exc:
        return SinglePosting(subject, community, key, data, now, request, None, exc)
    transaction_id = new_id()
    transaction = PostedTransaction(
        id=transaction_id,
        community_id=community.id,
        kind=request.kind,
        memo=request.memo,
        occurred_on=request.occurred_on,
        details=request.details,
        posted_at=now,
        posted_by_user_id=subject.user_id,
        posted_by_client_id=subject.client_id,
        reverses_id=None,
        content_hash=content_hash(transaction_id, community.id, request),
        entries=(),
    )
    return SinglePosting(subject, community, key, data, now, request, transaction, None)


async def answer(
    poster: SinglePoster,
    subject: TokenSubject,
    community: CommunityRef,
    key_header: str,
    body: TransactionCreate,
    path: str,
) -> Response:
    """The answer to ``POST /v1/communities/{community_id}/transactions``, for the route and
    for the fast path (app/ledger/fast_path.py): access, key, checks and writes in one call."""
    key = request_key(subject, key_header, "POST", path, body)
    return idempotent_reply(await poster.post(prepare(subject, community, key, body)))


class SinglePoster(Protocol):
    """Posts a prepared single posting in one call to the database, or raises its refusal."""

    async def post(self, posting: SinglePosting) -> Outcome: ...

    async def close(self) -> None: ...


def single_poster(
    engine: AsyncEngine, settings: Settings, sqlite_write_lock: asyncio.Lock | None
) -> SinglePoster:
    """The poster for the engine's database; on SQLite it takes turns with the general path's
    writers on the application's write lock."""
    if engine.dialect.name == "postgresql":
        return PostgresSinglePoster.for_engine(engine, settings.posting_concurrency)
    from app.ledger.single_post_sqlite import SqliteSinglePoster  # imports this module

    assert sqlite_write_lock is not None
    return SqliteSinglePoster(engine, settings.sqlite_busy_timeout_ms, sqlite_write_lock)


class PostgresSinglePoster:
    """The posting as one call of ``ledger_post_transaction`` (migrations 0008 and 0011), on
    connections of its own.

    A worker has at most ``concurrency`` postings in the database at once, each on one of at
    most as many asyncpg connections the poster keeps (most recently used first). Checking a
    connection out of SQLAlchemy's pool and back cost about five times the call itself in the
    worker's CPU (about 155 us against 31 us for a trivial statement); here it is a list pop.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        concurrency: int,
        *,
        recycle_seconds: float = CONNECTION_RECYCLE_SECONDS,
    ) -> None:
        self._connect = connect
        self._admission = asyncio.Semaphore(concurrency)
        self._recycle_seconds = recycle_seconds
        self._idle: list[tuple[asyncpg.Connection, float]] = []  # with when each was opened
        self._closed = False

    @classmethod
    def for_engine(cls, engine: AsyncEngine, concurrency: int) -> PostgresSinglePoster:
        """Connections to the engine's database, as asyncpg takes its URL."""
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(dsn, server_settings=POSTER_SESSION_SETTINGS)

        return cls(connect, concurrency)

    async def close(self) -> None:
        """Closes the idle connections now, and each busy one when its call ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.terminate()

    async def post(self, posting: SinglePosting) -> Outcome:
        async with self._admission:
            # Stamped once its turn has come; the function moves the stamp to the accounts'
            # last change should another posting on them have been written after it.
            posting = posting.stamped(utcnow())
            row = await self._call(self._parameters(posting))
        outcome: str = row["outcome"]
        if outcome in ("posted", "replay"):
            return Outcome(
                status=row["response_status"],
                body=row["response_body"],
                replayed=outcome == "replay",
            )
        if outcome == "refused_by_service":
            assert posting.refusal is not None
            raise posting.refusal
        community = posting.community
        detail = json.loads(row["detail"]) if row["detail"] is not None else {}
        raise _refusal(outcome, detail, community.id, community.as_written)

    async def _call(self, parameters: tuple[Any, ...]) -> asyncpg.Record:
        connection, opened = self._idle_connection()
        reused = connection is not None
        while True:
            if connection is None:
                connection, opened = await self._connect(), time.monotonic()
            try:
                row: asyncpg.Record = await connection.fetchrow(_CALL, *parameters)
            except BaseException as exc:
                if _connection_sound_after(exc, connection):
                    self._release(connection, opened)  # the server refused: its transaction ended
                else:
                    connection.terminate()  # broken, or interrupted mid-call: never used again
                if reused and _dropped_connection(exc):
                    # A connection that waited idle was dropped (a database restart, a network
                    # timeout): once more on a new one. The key makes that safe: a posting the
                    # first call did commit is replayed, one still running is in progress.
                    connection, reused = None, False
                    continue
                if isinstance(exc, asyncpg.UniqueViolationError):
                    if exc.constraint_name == _KEY_CONSTRAINT:
                        raise key_taken_concurrently() from exc  # a first request committed now
                elif isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in _BUSY_SQLSTATES:
                    raise ledger_busy() from exc
                raise
            self._release(connection, opened)
            return row

    def _idle_connection(self) -> tuple[asyncpg.Connection | None, float]:
        """The most recently used idle connection that is still open (asyncpg closes one when
        the server ends it or the socket goes); closed ones are let go."""
        while self._idle:
            connection, opened = self._idle.pop()
            if not connection.is_closed():
                return connection, opened
            connection.terminate()
        return None, 0.0

    def _release(self, connection: asyncpg.Connection, opened: float) -> None:
        if self._closed or time.monotonic() - opened > self._recycle_seconds:
            connection.terminate()
        else:
            self._idle.append((connection, opened))

    @staticmethod
    def _parameters(posting: SinglePosting) -> tuple[Any, ...]:
        """The arguments of ``ledger_post_transaction``, in its order."""
        subject, key, data, now = posting.subject, posting.key, posting.data, posting.now
        request, transaction = posting.request, posting.transaction
        accounts: list[uuid.UUID] = []
        minutes: list[int] = []
        digest = head = posted_at = tail = ""
        if request is not None and transaction is not None:
            accounts = [account for account, _ in request.lines]
            minutes = [amount for _, amount in request.lines]
            digest = transaction.content_hash
            head, posted_at, tail = _response_before_entries(transaction)
        return (
            subject.user_id,
            subject.client_id,
            WRITE_SCOPE in subject.scopes,
            posting.community.id,
            key.principal,
            key.key,
            key.request_hash,
            key.method,
            key.path,
            lock_id(key.principal, key.key),
            now,
            now + RETENTION,
            posting.refusal is not None,
            transaction.id if transaction is not None else None,
            request.kind.value if request is not None else data.kind,
            data.memo,
            request.occurred_on if request is not None else now.date(),
            json.dumps(data.details),
            digest,
            accounts,
            minutes,
            head,
            posted_at,
            tail,
            "}",
        )


def _response_before_entries(transaction: PostedTransaction) -> tuple[str, str, str]:
    """The response as the general path renders it (``transaction_read``) up to its list of
    entries, which are the last field, cut around the value of ``posted_at`` (the function
    renders another time there if it moves the stamp). No field after ``posted_at`` holds
    client text, so its last occurrence is the transaction's own."""
    rendered = transaction_read(transaction).model_dump_json()
    assert rendered.endswith(_ENTRIES_LAST)
    before_entries = rendered[: -len("[]}")]
    start = before_entries.rindex(_POSTED_AT) + len(_POSTED_AT)
    end = before_entries.index('"', start)
    return before_entries[:start], before_entries[start:end], before_entries[end:]


def _dropped_connection(error: BaseException) -> bool:
    """Whether ``error`` says the connection itself was gone (not a refusal, not a cancel).
    A server's termination message that arrived while the connection was idle can leave
    asyncpg's protocol mid-way, not yet closed: its next call fails as an internal error."""
    return isinstance(
        error,
        (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError, *_CONNECTION_ENDING),
    )


def _connection_sound_after(error: BaseException, connection: asyncpg.Connection) -> bool:
    """Whether the connection can take another call after the call failed with ``error``."""
    return (
        isinstance(error, asyncpg.PostgresError)
        and not isinstance(error, _CONNECTION_ENDING)
        and not connection.is_closed()
    )


def _refusal(
    outcome: str, detail: dict[str, Any], community_id: uuid.UUID, raw_community_id: str
) -> DomainError:
    match outcome:
        case "invalid_user":
            return user_gone()
        case "invalid_client":
            return client_revoked()
        case "community_not_found":
            return community_not_found(raw_community_id)
        case "client_of_another_community":
            return client_of_another_community(community_id)
        case "insufficient_scope":
            return scope_needed(WRITE_SCOPE)
        case "not_a_member":
            return not_a_member(detail["slug"])
        case "membership_inactive":
            return membership_inactive(detail["slug"], detail["status"])
        case "in_progress":
            return key_in_progress()
        case "key_reused":
            return key_reused()
        case "not_a_ledger_writer":
            return not_a_ledger_writer()
        case "account_not_found":
            return account_not_found(detail["account_ids"], detail["slug"])
        case "account_closed":
            return account_closed(detail["account_id"])
        case "insufficient_balance":
            return insufficient_balance(
                detail["account_id"], detail["balance"], detail["after"], detail["limit"]
            )
        case "over_balance_cap":
            return over_balance_cap(
                detail["account_id"], detail["balance"], detail["after"], detail["limit"]
            )
    raise AssertionError(f"ledger_post_transaction answered {outcome!r}")

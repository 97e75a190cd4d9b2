"""A single posting on SQLite: the whole unit of work in one hop to a database thread.

Through SQLAlchemy and aiosqlite every statement is several hops between the event loop and
aiosqlite's thread (cursor, execute, fetch, close), and the hops, not SQLite, were most of a
posting's cost. Here the poster owns one connection and one thread. A posting is one call to
that thread, which runs, in one ``BEGIN IMMEDIATE`` transaction, the general path's steps
(see ``app/ledger/single_post.py``) as plain statements, and decides with the general path's
own rules and refusal factories. Values are encoded by the models' own column types, so the
rows are exactly those SQLAlchemy writes.

Writers of this process take turns on the application's SQLite write lock, as the general
path's do (``app.core.database.get_session``); writers of other processes wait on
SQLite's busy timeout. Postings that arrive while the thread is busy queue up and go over
together, in one turn of the lock and one hop (each still in its own transaction, in order):
a hop and a lock hand-over per posting each waited for the event loop to get round to it,
and the thread idled meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Column, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.community import (
    client_of_another_community,
    community_not_found,
    membership_inactive,
    not_a_member,
    scope_needed,
)
from app.access.principal import client_revoked, user_gone
from app.core.clock import utcnow
from app.core.database import configure_sqlite_connection
from app.ledger.idempotency import RETENTION, Outcome, key_reused
from app.ledger.posting import (
    AccountState,
    PostedTransaction,
    PostingRequest,
    account_states,
    apply_posting,
    check_accounts_known,
    posting_time,
)
from app.ledger.service import not_a_ledger_writer, transaction_read
from app.ledger.single_post import WRITE_SCOPE, SinglePosting
from app.models import Transaction
from app.models.identity import MemberRole, MemberStatus

_WHO_IS_THE_USER = """
    SELECT u.is_active, u.is_platform_admin, c.id IS NOT NULL, c.slug,
           m.user_id IS NOT NULL, m.status, m.role
    FROM users AS u
    LEFT JOIN communities AS c ON c.id = :community
    LEFT JOIN members AS m ON m.community_id = :community AND m.user_id = u.id
    WHERE u.id = :user
"""
_WHO_IS_THE_CLIENT = """
    SELECT cl.revoked_at IS NULL, cl.community_id, cl.scopes, c.id IS NOT NULL, c.slug
    FROM api_clients AS cl LEFT JOIN communities AS c ON c.id = :community
    WHERE cl.id = :client
"""
_STORED_OUTCOME = """
    SELECT request_hash, response_status, response_body, expires_at > :now
    FROM idempotency_records WHERE principal = :principal AND key = :key
"""
_FORGET_EXPIRED = "DELETE FROM idempotency_records WHERE principal = :principal AND key = :key"
_ACCOUNTS = """
    SELECT a.id, a.status, coalesce(a.min_balance, c.default_min_balance),
           coalesce(a.max_balance, c.default_max_balance), a.balance, a.version,
           a.earned_total, a.spent_total, a.updated_at
    FROM accounts AS a JOIN communities AS c ON c.id = a.community_id
    WHERE a.id IN ({placeholders}) AND a.community_id = ?
"""
_INSERT_TRANSACTION = """
    INSERT INTO transactions (id, community_id, kind, memo, occurred_on, details, posted_at,
                              posted_by_user_id, posted_by_client_id, reverses_id, content_hash)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)
"""
_INSERT_ENTRY = """
    INSERT INTO entries (transaction_id, account_id, amount, balance_after, account_version,
                         posted_at)
    VALUES (?, ?, ?, ?, ?, ?)
"""
_UPDATE_ACCOUNT = """
    UPDATE accounts SET balance = ?, version = ?, earned_total = ?, spent_total = ?,
                        updated_at = ?
    WHERE id = ?
"""
_RECORD_OUTCOME = """
    INSERT INTO idempotency_records (principal, key, request_hash, method, path, response_status,
                                     response_body, transaction_id, created_at, expires_at)
    VALUES (?, ?, ?, ?, ?, 201, ?, ?, ?, ?)
"""
# At most this many queued postings go to the thread in one turn of the write lock, so the
# general path's writers wait for no more than these.
MAX_POSTINGS_PER_TURN = 32
_Queued = tuple[SinglePosting, "asyncio.Future[Outcome]"]
_LEDGER_WRITER_ROLES = frozenset({MemberRole.coordinator.value, MemberRole.admin.value})


class _Encoders:
    """The bound forms of ids, instants, dates and documents, from the models' column types on
    this dialect (SQLite keeps ids as 32 hex digits and instants as naive UTC text)."""

    def __init__(self, dialect: Dialect) -> None:
        def encoder(column: Column[Any]) -> Callable[[Any], Any]:
            process = column.type.dialect_impl(dialect).bind_processor(dialect)
            assert process is not None
            return process

        transactions = cast(Table, Transaction.__table__)
        self.id = encoder(transactions.c.id)
        self.instant = encoder(transactions.c.posted_at)
        read_instant = transactions.c.posted_at.type.dialect_impl(dialect).result_processor(
            dialect, None
        )
        assert read_instant is not None
        self.read_instant = cast(Callable[[Any], datetime], read_instant)
        self.date = encoder(transactions.c.occurred_on)
        self.document = encoder(transactions.c.details)

    def optional_id(self, value: uuid.UUID | None) -> str | None:
        return None if value is None else cast(str, self.id(value))


class SqliteSinglePoster:
    def __init__(self, engine: AsyncEngine, busy_timeout_ms: int, write_lock: asyncio.Lock) -> None:
        dialect = engine.dialect
        self._connect_args = dialect.create_connect_args(engine.url)
        self._busy_timeout_ms = busy_timeout_ms
        self._encode = _Encoders(dialect)
        # One thread, one connection, one posting at a time (they are serialised anyway).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._write_lock = write_lock  # the application's: shared with the general path
        self._queue: list[_Queued] = []
        self._drainer: asyncio.Task[None] | None = None

    async def post(self, posting: SinglePosting) -> Outcome:
        """Queues the posting for the poster's thread and waits for its outcome."""
        loop = asyncio.get_running_loop()
        queued: _Queued = (posting, loop.create_future())
        self._queue.append(queued)
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        try:
            return await asyncio.shield(queued[1])
        except asyncio.CancelledError:
            # The client went away. A posting not begun is never posted; one begun still ends
            # (committed or rolled back) before the next writer may begin.
            begun = all(waiting is not queued for waiting in self._queue)
            if not begun:
                self._queue = [waiting for waiting in self._queue if waiting is not queued]
            else:
                await asyncio.wait([queued[1]])
                if not queued[1].cancelled():
                    queued[1].exception()  # retrieved: the client is gone, not the error
            raise

    async def _drain(self) -> None:
        """Hands the queued postings to the thread, as many as have queued up at a time, on
        the write lock: one hop and one turn of the lock for them all, not one each."""
        loop = asyncio.get_running_loop()
        batch: list[_Queued] = []
        try:
            while self._queue:
                batch = self._queue[:MAX_POSTINGS_PER_TURN]
                del self._queue[:MAX_POSTINGS_PER_TURN]
                postings = [posting for posting, _ in batch]
                try:
                    async with self._write_lock:
                        running = loop.run_in_executor(self._thread, self._post_each, postings)
                        outcomes: list[Outcome | Exception] = await asyncio.shield(running)
                except Exception as exc:  # the thread could not take them (it was shut down)
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, Outcome):
                        future.set_result(outcome)
                    else:
                        future.set_exception(outcome)
        finally:
            self._drainer = None
            for _, future in [*batch, *self._queue]:  # ended early (the loop is closing)
                future.cancel()  # no-op for the futures already answered
            self._queue.clear()

    async def close(self) -> None:
        if self._drainer is not None:
            await asyncio.wait([self._drainer])
        await asyncio.get_running_loop().run_in_executor(self._thread, self._disconnect)
        self._thread.shutdown(wait=True)

    # --- on the poster's thread ---------------------------------------------------------------

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            (database,), options = self._connect_args  # the path, or a URI with uri=True
            connection = sqlite3.connect(database, **options)
            configure_sqlite_connection(connection, self._busy_timeout_ms)
            self._connection = connection
        return self._connection

    def _post_each(self, postings: Sequence[SinglePosting]) -> list[Outcome | Exception]:
        """Each posting in its own transaction, in order: its outcome or its refusal."""
        outcomes: list[Outcome | Exception] = []
        for posting in postings:
            try:
                outcomes.append(self._post(posting))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _post(self, posting: SinglePosting) -> Outcome:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            outcome = self._post_in_transaction(db, posting)
            db.execute("ROLLBACK" if outcome.replayed else "COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return outcome

    def _post_in_transaction(self, db: sqlite3.Connection, posting: SinglePosting) -> Outcome:
        posting = posting.stamped(utcnow())  # once the write lock is held
        slug, may_post_directly = self._who_may_act(db, posting)

        key, now = posting.key, self._encode.instant(posting.now)
        this_key = {"principal": key.principal, "key": key.key}
        stored = db.execute(_STORED_OUTCOME, {**this_key, "now": now}).fetchone()
        if stored is not None:
            request_hash, status, body, live = stored
            if live:
                if request_hash != key.request_hash:
                    raise key_reused()
                return Outcome(status=status, body=body, replayed=True)
            db.execute(_FORGET_EXPIRED, this_key)  # expired: the key may be used afresh

        if not may_post_directly:
            raise not_a_ledger_writer()
        if posting.refusal is not None:
            raise posting.refusal
        assert posting.request is not None
        assert posting.transaction is not None
        posted, accounts = self._apply(db, posting.request, posting.transaction, slug)
        body = transaction_read(posted).model_dump_json()
        self._write(db, posted, accounts)
        encode = self._encode
        now = encode.instant(posted.posted_at)
        db.execute(
            _RECORD_OUTCOME,
            (
                key.principal,
                key.key,
                key.request_hash,
                key.method,
                key.path,
                body,
                encode.id(posted.id),
                now,
                encode.instant(posted.posted_at + RETENTION),
            ),
        )
        return Outcome(status=201, body=body, replayed=False)

    def _who_may_act(self, db: sqlite3.Connection, posting: SinglePosting) -> tuple[str, bool]:
        """The community's slug and whether the caller may post directly, or the refusal."""
        subject, community = posting.subject, posting.community
        community_id = self._encode.id(community.id)
        if subject.user_id is not None:
            row = db.execute(
                _WHO_IS_THE_USER,
                {"community": community_id, "user": self._encode.id(subject.user_id)},
            ).fetchone()
            if row is None or not row[0]:
                raise user_gone()
            _, is_platform_admin, community_found, slug, is_member, status, role = row
            if not community_found:
                raise community_not_found(community.as_written)
            if is_platform_admin:
                return slug, True
            if not is_member:
                raise not_a_member(slug)
            if status != MemberStatus.active:
                raise membership_inactive(slug, status)
            return slug, role in _LEDGER_WRITER_ROLES
        row = db.execute(
            _WHO_IS_THE_CLIENT,
            {"community": community_id, "client": self._encode.id(subject.client_id)},
        ).fetchone()
        if row is None or not row[0]:
            raise client_revoked()
        _, client_community_id, scopes, community_found, slug = row
        if not community_found:
            raise community_not_found(community.as_written)
        if client_community_id != community_id:
            raise client_of_another_community(community.id)
        if WRITE_SCOPE not in subject.scopes or WRITE_SCOPE not in json.loads(scopes):
            raise scope_needed(WRITE_SCOPE)
        return slug, True

    def _apply(
        self,
        db: sqlite3.Connection,
        request: PostingRequest,
        transaction: PostedTransaction,
        slug: str,
    ) -> tuple[PostedTransaction, list[AccountState]]:
        """The posting applied to its accounts (the transaction holds the database's write
        lock, so no locking order is needed), with their new states, or the refusal."""
        account_ids = {self._encode.id(account): account for account, _ in request.lines}
        placeholders = ", ".join("?" * len(account_ids))
        rows = db.execute(
            _ACCOUNTS.format(placeholders=placeholders),
            (*account_ids, self._encode.id(transaction.community_id)),
        )
        instant = self._encode.read_instant
        states = account_states(
            (account_ids[id_], *rest, instant(updated_at)) for id_, *rest, updated_at in rows
        )
        check_accounts_known(request, states, slug)
        posted_at = posting_time(transaction.posted_at, states.values())
        entries = apply_posting(request, states)
        posted = replace(transaction, posted_at=posted_at, entries=entries)
        return posted, list(states.values())

    def _write(
        self, db: sqlite3.Connection, posted: PostedTransaction, accounts: Sequence[AccountState]
    ) -> None:
        encode = self._encode
        transaction_id = encode.id(posted.id)
        posted_at = encode.instant(posted.posted_at)
        db.execute(
            _INSERT_TRANSACTION,
            (
                transaction_id,
                encode.id(posted.community_id),
                posted.kind.value,
                posted.memo,
                encode.date(posted.occurred_on),
                encode.document(dict(posted.details)),
                posted_at,
                encode.optional_id(posted.posted_by_user_id),
                encode.optional_id(posted.posted_by_client_id),
                posted.content_hash,
            ),
        )
        entries: Sequence[tuple[Any, ...]] = [
            (
                transaction_id,
                encode.id(entry.account_id),
                entry.minutes,
                entry.balance_after,
                entry.account_version,
                posted_at,
            )
            for entry in posted.entries
        ]
        db.executemany(_INSERT_ENTRY, entries)
        db.executemany(
            _UPDATE_ACCOUNT,
            [
                (
                    account.balance,
                    account.version,
                    account.earned_total,
                    account.spent_total,
                    posted_at,
                    encode.id(account.id),
                )
                for account in accounts
            ],
        )

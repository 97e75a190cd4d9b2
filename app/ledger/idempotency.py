"""Idempotency keys: one key, one outcome.

The record is written in the same database transaction as the posting it describes, so a
crash can never leave a posting without its record or a record without its posting.

- same key, same request: the stored response is replayed (``Idempotency-Replayed: true``);
- same key, different request: 422 ``idempotency_key_reused``;
- same key while the first request is still running: 409 ``idempotency_in_progress``
  (PostgreSQL: the first request holds a transaction-scoped advisory lock on the key; SQLite
  runs one writer at a time, so the second request simply waits and then replays).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from pydantic import BaseModel
from sqlalchemy import Boolean, Table, bindparam, column, delete, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.clock import utcnow
from app.ledger import errors
from app.models import IdempotencyRecord

RETENTION = timedelta(hours=48)  # at least 24 h, as promised to clients
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class IdempotencyKey:
    principal: str  # keys are scoped per user or client
    key: str
    method: str
    path: str
    request_hash: str


@dataclass(frozen=True)
class RenderedJSON:
    """A response body its operation serialised itself (a batch renders its items while the
    database writes them), stored and sent as it is."""

    text: str


def response_text(response: BaseModel | RenderedJSON) -> str:
    return response.text if isinstance(response, RenderedJSON) else response.model_dump_json()


@dataclass(frozen=True)
class Outcome:
    status: int
    body: str  # JSON text, exactly as first sent
    replayed: bool


def request_fingerprint(method: str, path: str, payload: BaseModel) -> str:
    """A stable hash of what the request asks for: the validated body, serialised in the
    model's field order, so the client's field order and whitespace do not count (and a
    1,000-transaction batch is hashed from pydantic's compiled serialiser, not re-walked)."""
    digest = hashlib.sha256(f"{method}\x1f{path}\x1f".encode())
    digest.update(payload.model_dump_json().encode())
    return digest.hexdigest()


# Built once: statements on the hot path skip construction and cache-key work per request.
_records = cast(Table, IdempotencyRecord.__table__)
_STORED = (
    _records.c.request_hash,
    _records.c.response_status,
    _records.c.response_body,
    _records.c.expires_at,
)
_THIS_KEY = (
    _records.c.principal == bindparam("principal"),
    _records.c.key == bindparam("key"),
)
_FIND = select(*_STORED).where(*_THIS_KEY)
# PostgreSQL: take the key's advisory lock and read its record in one round trip. The read's
# snapshot predates the lock, so if the first request commits in between, this one does not
# see its record, runs, and is stopped by the unique (principal, key) index when it records
# its outcome: 409 ``idempotency_in_progress`` and a rollback, never a second posting.
_LOCK_AND_FIND_POSTGRES = text(
    """
    SELECT pg_try_advisory_xact_lock(:lock_id) AS locked,
           r.request_hash, r.response_status, r.response_body, r.expires_at
    FROM (SELECT 1) AS one
    LEFT JOIN idempotency_records AS r ON r.principal = :principal AND r.key = :key
    """
).columns(column("locked", Boolean), *_STORED)
_FORGET = delete(_records).where(*_THIS_KEY)
_RECORD = insert(_records)


def key_in_progress() -> errors.IdempotencyInProgress:
    return errors.IdempotencyInProgress(
        "The first request with this Idempotency-Key has not finished; retry shortly."
    )


def key_reused() -> errors.IdempotencyKeyReused:
    return errors.IdempotencyKeyReused(
        "This Idempotency-Key was used for a different request; use a new key."
    )


def key_taken_concurrently() -> errors.IdempotencyInProgress:
    return errors.IdempotencyInProgress("A concurrent request used this key; retry.")


def lock_id(principal: str, key: str) -> int:
    """The advisory lock a key is held under while its first request runs (PostgreSQL)."""
    digest = hashlib.sha256(f"{principal}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def run_idempotent(
    session: AsyncSession,
    key: IdempotencyKey | None,
    operation: Callable[[], Awaitable[tuple[int, BaseModel | RenderedJSON, uuid.UUID | None]]],
) -> Outcome:
    """Run ``operation`` once per key; it returns (status, response, transaction id)."""
    if key is None:
        status, response, _ = await operation()
        return Outcome(status=status, body=response_text(response), replayed=False)

    this_key = {"principal": key.principal, "key": key.key}
    if session.get_bind().dialect.name == "postgresql":
        row = (
            await session.execute(
                _LOCK_AND_FIND_POSTGRES, {**this_key, "lock_id": lock_id(key.principal, key.key)}
            )
        ).one()
        if not row.locked:
            raise key_in_progress()
        existing = row if row.request_hash is not None else None
    else:
        existing = (await session.execute(_FIND, this_key)).one_or_none()
    if existing is not None and existing.expires_at > utcnow():
        if existing.request_hash != key.request_hash:
            raise key_reused()
        return Outcome(status=existing.response_status, body=existing.response_body, replayed=True)
    if existing is not None:  # expired: the key may be used afresh
        await session.execute(_FORGET, this_key)

    status, response, transaction_id = await operation()
    body = response_text(response)
    try:
        # Core insert: no identity-map bookkeeping and no RETURNING on the hot path.
        now = utcnow()
        await session.execute(
            _RECORD,
            {
                "principal": key.principal,
                "key": key.key,
                "request_hash": key.request_hash,
                "method": key.method,
                "path": key.path,
                "response_status": status,
                "response_body": body,
                "transaction_id": transaction_id,
                "created_at": now,
                "expires_at": now + RETENTION,
            },
        )
    except IntegrityError as exc:  # pragma: no cover - a first request committed a moment ago
        raise key_taken_concurrently() from exc
    return Outcome(status=status, body=body, replayed=False)


async def purge_expired(session: AsyncSession) -> int:
    result = await session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)

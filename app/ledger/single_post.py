"""One transaction posted on PostgreSQL in one round trip.

``POST /v1/communities/{community_id}/transactions`` is the ledger's hot path. The general
route (the guard dependencies, ``run_idempotent`` and the posting engine) takes eight round
trips through SQLAlchemy; here the database function ``ledger_post_transaction`` (migration
0008) does the same work in one statement, in one transaction:

1. the token's user is active, or its client not revoked (``get_principal``);
2. the caller belongs to the community, or is a platform admin, or is the community's client
   with ``ledger:write`` (``authorise``);
3. the ``Idempotency-Key``: advisory lock, stored record, replay or refusal
   (``run_idempotent``);
4. the caller may post directly: coordinator, admin or client (``require_ledger_writer``);
5. the accounts locked in ascending id order, checked and written (the posting engine), and
   the response stored with the key.

Everything that needs no database is done here first, exactly as the general path does it:
the request's shape (a refusal is only raised once steps 1-4 have passed, so the order of
refusals is the general path's), the transaction id, its content hash, and the response
rendered by pydantic up to its entries, which the function splices in with their balances.
Each refusal is built by the same factory the general path uses, so codes and texts match;
the ledger's tests run against this path on PostgreSQL and the engine on SQLite.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

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
    check_occurred_on,
    not_a_ledger_writer,
    posting_request,
    transaction_read,
)

WRITE_SCOPE = "ledger:write"
_CALL = """
    SELECT outcome, detail, response_status, response_body
    FROM ledger_post_transaction($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                                 $15, $16, $17, $18, $19, $20, $21, $22, $23)
"""
_ENTRIES_LAST = '"entries":[]}'
_BUSY_SQLSTATES = {"40P01", "40001"}  # deadlock_detected, serialization_failure
_KEY_CONSTRAINT = "uq_idempotency_records_principal_key"


async def post_transaction(
    engine: AsyncEngine,
    subject: TokenSubject,
    community: CommunityRef,
    key: IdempotencyKey,
    data: TransactionCreate,
) -> Outcome:
    """Post ``data`` for ``subject`` under ``key`` in the community (its id, and the id as the
    client wrote it), or raise the general path's refusal."""
    community_id, raw_community_id = community.id, community.as_written
    refusal: DomainError | None = None
    request: PostingRequest | None = None
    try:
        check_occurred_on(data)
        request = posting_request(data)
        check_shape(request)
    except DomainError as exc:
        refusal = exc

    now = utcnow()
    transaction_id = new_id()
    accounts: list[uuid.UUID] = []
    minutes: list[int] = []
    digest = prefix = ""
    if request is not None and refusal is None:
        accounts = [account for account, _ in request.lines]
        minutes = [amount for _, amount in request.lines]
        digest = content_hash(transaction_id, community_id, request)
        prefix = _response_prefix(transaction_id, community_id, request, subject, now, digest)
    kind = request.kind.value if request is not None else data.kind
    row = await _call(
        engine,
        subject.user_id,
        subject.client_id,
        WRITE_SCOPE in subject.scopes,
        community_id,
        key.principal,
        key.key,
        key.request_hash,
        key.method,
        key.path,
        lock_id(key.principal, key.key),
        now,
        now + RETENTION,
        refusal is not None,
        transaction_id,
        kind,
        data.memo,
        request.occurred_on if request is not None else now.date(),
        json.dumps(data.details),
        digest,
        accounts,
        minutes,
        prefix,
        "}",
    )
    outcome: str = row["outcome"]
    if outcome in ("posted", "replay"):
        return Outcome(
            status=row["response_status"],
            body=row["response_body"],
            replayed=outcome == "replay",
        )
    if outcome == "refused_by_service":
        assert refusal is not None
        raise refusal
    # The engine's connections decode jsonb (SQLAlchemy registers the codec).
    raise _refusal(outcome, row["detail"] or {}, community_id, raw_community_id)


def _response_prefix(
    transaction_id: uuid.UUID,
    community_id: uuid.UUID,
    request: PostingRequest,
    subject: TokenSubject,
    now: datetime,
    digest: str,
) -> str:
    """The response as the general path renders it (``transaction_read``), up to its list of
    entries, which are the last field."""
    rendered = transaction_read(
        PostedTransaction(
            id=transaction_id,
            community_id=community_id,
            kind=request.kind,
            memo=request.memo,
            occurred_on=request.occurred_on,
            details=request.details,
            posted_at=now,
            posted_by_user_id=subject.user_id,
            posted_by_client_id=subject.client_id,
            reverses_id=None,
            content_hash=digest,
            entries=(),
        )
    ).model_dump_json()
    assert rendered.endswith(_ENTRIES_LAST)
    return rendered[: -len("[]}")]


async def _call(engine: AsyncEngine, *parameters: Any) -> asyncpg.Record:
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        try:
            row: asyncpg.Record = await driver.fetchrow(_CALL, *parameters)
        except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError):
            await connection.invalidate()  # never hand a broken connection back to the pool
            raise
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == _KEY_CONSTRAINT:
                raise key_taken_concurrently() from exc  # a first request committed just now
            raise
        except asyncpg.PostgresError as exc:
            if exc.sqlstate in _BUSY_SQLSTATES:
                raise ledger_busy() from exc
            raise
    return row


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

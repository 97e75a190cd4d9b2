"""Reconciliation runs: prove the books are right, detect tampering, seal them.

A run only reads the ledger. It works in three steps so concurrent postings neither wait for
it nor confuse it (docs/seals.md):

1. settle a high-water mark (the highest entry id that can no longer change);
2. run every check and verify the seal chain inside one read snapshot (REPEATABLE READ on
   PostgreSQL, a deferred WAL read transaction on SQLite): postings that commit meanwhile are
   simply not in the snapshot;
3. if everything passed, append a seal covering the entries up to the mark.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import case, func, null, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.database import READ_SNAPSHOT_OPTION
from app.core.pagination import PageParams, paginate_by_id
from app.models import Account, Entry, LedgerSeal, ReconciliationRun
from app.models.reconciliation import RunStatus
from app.reconciliation import seals
from app.reconciliation.checks import CHECKS, incremental_prelude, send_account_pass
from app.reconciliation.findings import CheckResult

logger = logging.getLogger("timebank.reconciliation")

PROGRESS_EVERY = 0.5  # seconds


async def create_run(
    session: AsyncSession,
    *,
    community_id: uuid.UUID | None,
    seal: bool,
    user_id: uuid.UUID | None,
    full: bool = False,
) -> ReconciliationRun:
    run = ReconciliationRun(
        community_id=community_id,
        status=RunStatus.queued.value,
        seal_requested=seal,
        full_requested=full,
        requested_by_user_id=user_id,
        report={},
    )
    session.add(run)
    await session.flush()
    return run


async def list_runs(
    session: AsyncSession, params: PageParams, community_ids: list[uuid.UUID] | None
) -> tuple[list[ReconciliationRun], str | None]:
    stmt = select(ReconciliationRun)
    if community_ids is not None:
        stmt = stmt.where(ReconciliationRun.community_id.in_(community_ids))
    return await paginate_by_id(
        session, stmt, ReconciliationRun.id, params, newest_first=True, row_id=lambda r: r.id
    )


@asynccontextmanager
async def read_snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.connect() as connection:
        postgresql = connection.dialect.name == "postgresql"
        if postgresql:
            connection = await connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        else:
            connection = await connection.execution_options(**{READ_SNAPSHOT_OPTION: True})
        async with (
            connection.begin(),
            AsyncSession(bind=connection, expire_on_commit=False) as session,
        ):
            if postgresql:
                # The checks sort and hash the whole ledger: let them do it in memory rather
                # than in temporary files (this transaction only; one run at a time). JIT
                # compiling their text-building expressions costs more than it saves (about
                # 0.7 s of 3.9 s on the 1,000,000-entry content-hash pass).
                # (SET LOCAL both, in one round trip.)
                await session.execute(
                    text(
                        "SELECT set_config('work_mem', :work_mem, true), set_config('jit', 'off', true)"
                    ),
                    {"work_mem": seals.SNAPSHOT_WORK_MEM},
                )
            yield session


async def _set(
    sessionmaker: async_sessionmaker[AsyncSession], run_id: uuid.UUID, **values: Any
) -> None:
    """Write a run's status, progress or report. On PostgreSQL without waiting for the write
    to reach the disk (synchronous_commit off, this transaction only): it is bookkeeping, and
    should the server crash first the run reads as unfinished, as it would had it crashed a
    moment earlier. The seal itself is written and committed as any other write."""
    async with sessionmaker() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("SET LOCAL synchronous_commit = off"))
        await session.execute(
            update(ReconciliationRun).where(ReconciliationRun.id == run_id).values(**values)
        )


class _Progress:
    """Progress written through its own short transaction (each a commit), at most every
    PROGRESS_EVERY seconds: a run of a fraction of a second would otherwise spend a good part
    of its time reporting how far it got."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], run_id: uuid.UUID) -> None:
        self.sessionmaker, self.run_id = sessionmaker, run_id
        self.last = time.perf_counter()

    async def report(self, progress: int) -> None:
        if time.perf_counter() - self.last >= PROGRESS_EVERY:
            await _set(self.sessionmaker, self.run_id, progress=progress)
            self.last = time.perf_counter()


@contextmanager
def _heap_set_aside() -> Iterator[None]:
    """While a run works, the garbage collector leaves the objects the process held before it
    alone (gc.freeze): a run takes in tens of thousands of rows at once, which set off full
    collections of the whole heap, each 70-100 ms in a service process (a quarter of an
    incremental run at 1,000,000 entries). Nothing is lost: unfrozen afterwards, they are
    collected as before. Should something else have frozen objects (the process at start, a
    run still going), the run leaves that as it is rather than unfreeze what it did not
    freeze."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def execute_run(
    engine: AsyncEngine,
    run_id: uuid.UUID,
    *,
    full_every: timedelta = seals.FULL_VERIFICATION_EVERY,
) -> ReconciliationRun:
    """Carry out a queued run and store its report. Never raises for what it finds; a run that
    cannot finish is stored with status ``error``. ``full_every``: how old the last full
    verification may be before a whole-ledger run verifies in full again."""
    with _heap_set_aside():
        return await _execute_run(engine, run_id, full_every)


async def _execute_run(
    engine: AsyncEngine, run_id: uuid.UUID, full_every: timedelta
) -> ReconciliationRun:
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    async with sessionmaker() as session:
        run = await session.get(ReconciliationRun, run_id)
        assert run is not None
        community_id, seal_requested = run.community_id, run.seal_requested
        full_requested = run.full_requested
    started = time.perf_counter()
    await _set(
        sessionmaker, run_id, status=RunStatus.running.value, started_at=utcnow(), progress=1
    )
    try:
        report = await _run_checks(
            engine, sessionmaker, run_id, community_id, seal_requested, full_requested, full_every
        )
    except Exception as exc:  # the run failed to run: say so, keep the service up
        logger.exception("reconciliation run %s failed", run_id)
        await _set(
            sessionmaker,
            run_id,
            status=RunStatus.error.value,
            finished_at=utcnow(),
            report={"error": f"{type(exc).__name__}: {exc}"},
        )
    else:
        report["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
        findings = sum(c["findings_total"] for c in report["checks"]) + len(report["tampering"])
        await _set(
            sessionmaker,
            run_id,
            status=(RunStatus.passed if findings == 0 else RunStatus.failed).value,
            finished_at=utcnow(),
            progress=100,
            findings_count=findings,
            report=report,
            seal_id=uuid.UUID(report["seal"]["id"]) if report.get("seal") else None,
        )
    async with sessionmaker() as session:
        final = await session.get(ReconciliationRun, run_id)
        assert final is not None
        return final


async def _run_checks(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    run_id: uuid.UUID,
    community_id: uuid.UUID | None,
    seal_requested: bool,
    full_requested: bool,
    full_every: timedelta,
) -> dict[str, Any]:
    async with engine.connect() as connection:
        high_water, settled = await seals.settled_high_water(connection)
        reference = await seals.census_reference(connection)
    steps = len(CHECKS) + 2
    postgresql = engine.dialect.name == "postgresql"
    async with read_snapshot(engine) as snapshot:
        span_beside: asyncio.Task[seals.SealSpan] | None = None
        if community_id is None:
            latest = await snapshot.scalar(
                select(LedgerSeal).order_by(LedgerSeal.high_water.desc()).limit(1)
            )
            plan = await seals.plan_verification(
                snapshot, latest, full_requested, reference, full_every, send_account_pass
            )
            beside_low = latest.high_water if latest else 0
            if (
                seal_requested
                and settled
                and high_water > beside_low
                and postgresql
                and plan.fresh is None
            ):
                # A full run's new span, digested beside while the run checks (the same rows
                # in the same snapshot; used only if every check passes). An incremental run
                # digests it from the rows its plan read (span_from_rows).
                span_beside = await seals.digest_span_beside(snapshot, beside_low, high_water)
        else:
            plan = seals.Plan("full", "A run for one community checks all of its rows.")
        progress = _Progress(sessionmaker, run_id)
        span = early = None
        try:
            fresh = plan.fresh
            if fresh is not None and community_id is None:
                # The account pass goes to the database while this process checks the new
                # transactions and digests the new span from the plan's rows (used only if
                # every check passes and the census scan bears the plan out).
                read = fresh.read if seal_requested and settled else None
                early = await incremental_prelude(
                    snapshot,
                    community_id,
                    fresh,
                    lambda: (
                        None
                        if read is None or high_water <= fresh.high_water
                        else seals.span_from_rows(read, fresh.high_water, high_water)
                    ),
                )
            results, tampering, last_seal, verified = await _check(
                snapshot, community_id, plan, progress
            )
            low = last_seal.high_water if last_seal else 0
            sealing = seal_requested and community_id is None and settled and high_water > low
            if sealing and _passed(results, tampering):
                if span_beside is not None and beside_low == low:
                    span = await span_beside
                elif early is not None and (early.low, early.high) == (low, high_water):
                    span = early  # (valid only if the census scan bears the plan out, below)
                elif plan.fresh is not None and plan.fresh.read is not None:
                    span = seals.span_from_rows(plan.fresh.read, low, high_water)
                if span is None:  # (SQLite: digested now, in Python)
                    span = await seals.digest_span(snapshot, low, high_water)
            # An incremental plan is made while the census scan still counts, beside: the
            # checks above ran meanwhile. Should the counts not bear the plan out, check again.
            confirmed = await seals.confirm_plan(snapshot, plan)
            if confirmed is not plan:
                for cached in (
                    "account_pass",
                    "transaction_pass",
                    "transactions_read",
                    "account_totals",
                ):
                    snapshot.info.pop(cached, None)
                plan = confirmed
                span = None  # (it may have been digested from rows the counts did not bear out)
                results, tampering, last_seal, verified = await _check(
                    snapshot, community_id, plan, progress
                )
        finally:
            plan.abandon()
            _discard(span_beside)  # (unused: the checks failed, or raised)
            if span_beside is not None:
                span_beside.cancel()  # (not waited for: the checks failed, or raised)
        await progress.report(int(100 * (steps - 1) / steps))
        passed = _passed(results, tampering)
        census = account_totals = None
        if not passed:
            span = None
        if passed and sealing:
            span = span or await seals.digest_span(snapshot, low, high_water)
            if reference is not None:
                census, account_totals = await seals.take_census(
                    snapshot,
                    span,
                    reference,
                    plan.full_verified_at if plan.mode == "incremental" else None,
                    plan.census_seed,
                    plan.fresh,
                )

    seal_report: dict[str, Any] | None = None
    note = None
    if span is not None:
        seal = seals.new_seal(last_seal, span, census)
        if account_totals is not None:  # arrays made by PostgreSQL: stored as they are
            account_totals.store_with(seal)
        try:
            async with sessionmaker() as session, session.begin():
                session.add(seal)
                await session.flush()
                if last_seal is not None:
                    # Only the latest seal's totals are read; the digest stays in the census.
                    await session.execute(
                        update(LedgerSeal)
                        .where(LedgerSeal.id == last_seal.id)
                        .values(
                            totals_accounts=null(),
                            totals_entries=null(),
                            totals_balances=null(),
                            totals_earned=null(),
                        )
                    )
        except IntegrityError:
            note = "Another run sealed the same range first; nothing new sealed."
        else:
            seal_report = {
                "id": str(seal.id),
                "previous_high_water": seal.previous_high_water,
                "high_water": seal.high_water,
                "entries": seal.entry_count,
                "chained_digest": seal.chained_digest,
            }
    elif community_id is not None:
        note = (
            "Seals cover the whole ledger: a run for one community neither verifies nor "
            "extends them; run without a community to seal."
        )
    elif not seal_requested:
        note = "Sealing was not requested."
    elif passed:
        if not settled:
            note = "A posting stayed in flight; nothing new sealed this time."
        else:
            note = "Nothing new to seal."
    return {
        "scope": {"community_id": str(community_id) if community_id else None},
        "high_water": high_water,
        "checks": [r.as_dict() for r in results],
        "tampering": [t.__dict__ for t in tampering],
        "sealed_entries_verified": verified,
        "verification": plan.as_dict(),
        "seal": seal_report,
        "seal_note": note,
    }


def _discard(task: asyncio.Task[Any] | None) -> None:
    """Stop work started beside that the run will not use (a no-op once it is done)."""
    if task is not None and not task.cancel() and not task.cancelled():
        task.exception()  # (retrieved, so that asyncio does not log it as lost)


def _passed(results: list[CheckResult], tampering: list[seals.TamperReport]) -> bool:
    return all(r.passed for r in results) and not tampering


async def _check(
    snapshot: AsyncSession, community_id: uuid.UUID | None, plan: seals.Plan, progress: _Progress
) -> tuple[list[CheckResult], list[seals.TamperReport], LedgerSeal | None, int]:
    """Every check, then (whole-ledger runs) the seal chain, as the plan says."""
    steps = len(CHECKS) + 2
    results = []
    for index, check in enumerate(CHECKS, start=1):
        results.append(await check(snapshot, community_id, plan.fresh))
        await progress.report(int(100 * index / steps))
    if community_id is None:
        tampering, last_seal, verified = await seals.verify_chain(snapshot, plan.fresh)
        if plan.census_break is not None and not tampering:
            tampering.append(plan.census_break)
        return results, tampering, last_seal, verified
    # Seals cover every community's entries at once: a scoped run neither verifies nor
    # extends them (and so names no other community's rows).
    return results, [], None, 0


def render_text(run: ReconciliationRun) -> str:
    """A report a person can read at a terminal."""
    report = run.report
    lines = [f"Reconciliation {run.id}: {run.status.upper()}"]
    if "error" in report:
        lines.append(f"  error: {report['error']}")
        return "\n".join(lines)
    if "checks" not in report:  # queued or still running: no report yet
        lines.append(f"  progress: {run.progress}%")
        return "\n".join(lines)
    scope = report["scope"]["community_id"] or "all communities"
    lines.append(
        f"  scope: {scope}; entries up to id {report['high_water']}; {report.get('duration_ms')} ms"
    )
    for check in report["checks"]:
        mark = "ok  " if check["status"] == "pass" else "FAIL"
        lines.append(f"  [{mark}] {check['name']}: {check['description']}")
        for finding in check["findings"][:20]:
            lines.append(
                f"         - {finding['message']} expected {finding['expected']!r}, found {finding['found']!r}"
            )
        if check["findings_total"] > 20:
            lines.append(f"         ... and {check['findings_total'] - 20} more")
    verification = report.get("verification") or {}
    if verification.get("mode") == "incremental":
        lines.append(
            f"  sealed entries verified: {report['sealed_entries_verified']} (unchanged since the "
            "last seal by its census; only blocks holding rows written since were re-hashed)"
        )
    else:
        lines.append(f"  sealed entries re-verified: {report['sealed_entries_verified']}")
    if verification:
        lines.append(f"  verification: {verification['mode']} ({verification['reason']})")
    for tamper in report["tampering"]:
        lines.append(f"  [TAMPER] {tamper['message']}")
    if report.get("seal"):
        seal = report["seal"]
        lines.append(
            f"  sealed entries ({seal['previous_high_water']}, {seal['high_water']}]: {seal['chained_digest']}"
        )
    elif report.get("seal_note"):
        lines.append(f"  seal: {report['seal_note']}")
    return "\n".join(lines)


async def repair_balances(session: AsyncSession) -> list[dict[str, Any]]:
    """Rebuild cached balances, versions and totals from entries; returns every change made.
    Entries are the truth; this never touches them. Accounts are locked while it works."""
    accounts = list(await session.scalars(select(Account).order_by(Account.id).with_for_update()))
    earned = func.sum(case((Entry.amount > 0, Entry.amount), else_=0))
    spent = func.sum(case((Entry.amount < 0, -Entry.amount), else_=0))
    sums = {
        account_id: (int(total), int(count), int(earned_total), int(spent_total))
        for account_id, total, count, earned_total, spent_total in await session.execute(
            select(Entry.account_id, func.sum(Entry.amount), func.count(), earned, spent).group_by(
                Entry.account_id
            )
        )
    }
    changes = []
    for account in accounts:
        balance, version, earned_total, spent_total = sums.get(account.id, (0, 0, 0, 0))
        wanted = {
            "balance": balance,
            "version": version,
            "earned_total": earned_total,
            "spent_total": spent_total,
        }
        current = {name: getattr(account, name) for name in wanted}
        if current != wanted:
            changes.append({"account_id": str(account.id), "from": current, "to": wanted})
            logger.warning("repair-balances: account %s %s -> %s", account.id, current, wanted)
            for name, value in wanted.items():
                setattr(account, name, value)
            account.updated_at = utcnow()
    await session.flush()
    return changes

"""Ledger posting throughput: the service against a PL/pgSQL reference, measured in one run.

    .venv/bin/python -m bench.ledger_post            # full run (~4 minutes)
    .venv/bin/python -m bench.ledger_post --quick    # ~5 s per measurement

Prints numbers; asserts nothing. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench import _procs, _reference, _seed, _wrk
from bench._load import BatchResult, LoadResult, login, percentile, run_batches, run_load
from bench._server import Server

GOAL_RATIO = 0.30
GOAL_P99_MS = 50.0
GOAL_RSS_MIB = 150.0
GOAL_SQLITE_RATE = 1000.0
GOAL_BATCH_RATIO = 1.5


@dataclass
class Summary:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, what: str, ours: str, reference: str, goal: str) -> None:
        self.rows.append((what, ours, reference, goal))

    def print(self) -> None:
        widths = [max(len(r[i]) for r in [*self.rows, self._head]) for i in range(4)]
        for row in [self._head, tuple("-" * w for w in widths), *self.rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))

    _head = ("measure", "ours", "reference", "goal")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ledger_post", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="~5 s per measurement")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 20)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (default 3)")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP connections")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (PostgreSQL)")
    parser.add_argument("--pgbench-clients", type=int, default=8)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--client",
        choices=["wrk", "raw", "httpx"],
        help="load generator for single postings: wrk (default when on PATH), a minimal "
        "asyncio HTTP/1.1 client (raw, the default otherwise) or httpx",
    )
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-batch", action="store_true")
    args = parser.parse_args(argv)
    if args.client is None:
        args.client = "wrk" if _wrk.available() else "raw"
    if args.duration is None:
        args.duration = 5.0 if args.quick else 20.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    return args


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=_seed.PROJECT_ROOT,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "app"],
            capture_output=True,
            text=True,
            check=True,
            cwd=_seed.PROJECT_ROOT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return rev + (" (app/ has uncommitted changes)" if dirty else "")


async def print_machine(args: argparse.Namespace) -> None:
    print("== machine")
    print(f"nproc:        {len(os.sched_getaffinity(0))} (cpu_count {os.cpu_count()})")
    print(f"cpu:          {_procs.cpu_model()}")
    print(f"memory:       {_procs.mem_total_gib():.1f} GiB")
    print(f"load average: {_procs.load_average()} (the machine is shared: others may be busy)")
    print(f"python:       {platform.python_version()} ({sys.executable})")
    print(f"postgresql:   {await _seed.server_version()}")
    print(f"pgbench:      {_procs.pgbench_version()}")
    libs = ("fastapi", "uvicorn", "sqlalchemy", "asyncpg", "aiosqlite", "pydantic", "httpx")
    print("libraries:    " + ", ".join(f"{p} {_version(p)}" for p in libs))
    print(f"revision:     {_git_revision()}")
    print(
        f"settings:     {args.accounts} accounts, {args.concurrency} connections "
        f"({args.client} client), {args.duration:g} s measured after {args.warmup:g} s warm-up"
    )
    print()


def _rss_line(server: Server) -> tuple[str, float, float]:
    parts: list[str] = []
    worst = peak = 0.0
    for pid in server.worker_pids():
        mem = _procs.memory(pid)
        if mem is None:
            continue
        worst = max(worst, mem.rss_mib)
        peak = max(peak, mem.hwm_mib)
        parts.append(f"pid {pid}: {mem.rss_mib:.0f} MiB (peak {mem.hwm_mib:.0f})")
    return "; ".join(parts) or "(no workers found)", worst, peak


def print_load(label: str, result: LoadResult, workers: int) -> None:
    wall = result.seconds or 1.0
    print(f"{label}")
    print(f"  postings/s:       {result.rate:,.0f}  ({result.ok:,} posted in {wall:.1f} s)")
    print(
        f"  latency ms:       p50 {result.percentile(50):.1f}  p90 {result.percentile(90):.1f}"
        f"  p99 {result.percentile(99):.1f}  max {result.percentile(100):.1f}"
    )
    statuses = ", ".join(f"{s}: {n:,}" for s, n in sorted(result.statuses.items()))
    print(f"  responses:        {statuses or 'none'}")
    if result.codes:
        for code, n in result.codes.most_common(8):
            print(f"    refused {n:,} x {code}")
    window = result.cpu_window or wall
    cores = result.machine_total / window
    others = result.machine_busy - result.client_cpu - result.server_cpu - result.database_cpu
    print(
        f"  CPU, cores busy:  machine {result.machine_busy / window:.2f} of {cores:.1f}"
        f" = server {result.server_cpu / window:.2f} ({workers} worker{'s' if workers > 1 else ''})"
        f" + load generator {result.client_cpu / window:.2f}"
        + (
            f" + database backends {result.database_cpu / window:.2f}"
            if result.database_cpu
            else ""
        )
        + f" + others {others / window:.2f}"
    )
    if result.ok_window:
        per = 1e6 / result.ok_window
        print(
            f"  CPU per posting:  server {result.server_cpu * per:,.0f} us"
            + (f", database {result.database_cpu * per:,.0f} us" if result.database_cpu else "")
            + f", load generator {result.client_cpu * per:,.0f} us"
        )


async def drive(*, client: str, **load: Any) -> LoadResult:
    """Single postings from the chosen load generator (``load``: the keyword arguments that
    ``run_load`` and ``_wrk.run_wrk`` share)."""
    if client == "wrk":
        return await asyncio.to_thread(functools.partial(_wrk.run_wrk, **load))
    return await run_load(client=client, **load)


async def pg_sessions(database: str) -> int:
    engine = create_async_engine(_seed.PG_ADMIN_URL)
    try:
        async with engine.connect() as conn:
            value = await conn.scalar(
                text("SELECT sessions FROM pg_stat_database WHERE datname = :d"), {"d": database}
            )
            return int(value or 0)
    finally:
        await engine.dispose()


async def settle(database: str) -> None:
    """VACUUM (ANALYZE) the database before a batch phase, ours and the reference's alike.

    The load phase before each leaves tens of thousands of new rows for autovacuum, which
    would otherwise work through them during the batches on one of the two cores. A worker
    already busy on a table holds the VACUUM until it is done, so this also waits it out.
    """
    engine = create_async_engine(_seed.pg_url(database), isolation_level="AUTOCOMMIT")
    t0 = time.perf_counter()
    try:
        async with engine.connect() as conn:
            await conn.execute(text("VACUUM (ANALYZE)"))
    finally:
        await engine.dispose()
    print(f"settled (VACUUM (ANALYZE) before the batches) in {time.perf_counter() - t0:.1f} s")


def machine_line(busy0: tuple[float, float], parts: dict[str, float]) -> str:
    """Cores busy over a phase: the whole machine, its named parts, and everyone else."""
    busy1 = _procs.machine_busy_seconds()
    busy, total = busy1[0] - busy0[0], busy1[1] - busy0[1]
    cores = os.cpu_count() or 1
    wall = total / cores if total else 1.0
    named = " + ".join(f"{name} {seconds / wall:.2f}" for name, seconds in parts.items())
    others = busy - sum(parts.values())
    return f"  CPU, cores busy:  machine {busy / wall:.2f} = {named} + others {others / wall:.2f}"


async def bench_postgres(
    args: argparse.Namespace, tmp: Path, summary: Summary, cleanup: list[str]
) -> None:
    suffix = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    ours_db = f"timebank_bench_{suffix}"
    ref_db = f"timebank_bench_ref_{suffix}"
    ours: LoadResult | None = None
    batch: BatchResult | None = None
    worst_rss = peak_rss = 0.0

    print(f"== PostgreSQL: the service ({args.workers} uvicorn workers), database {ours_db}")
    cleanup.append(ours_db)
    await _seed.create_pg_database(ours_db)
    url = _seed.pg_url(ours_db)
    t0 = time.perf_counter()
    await asyncio.to_thread(_seed.migrate, url)
    seeded = await _seed.seed(url, args.accounts)
    print(
        f"created, migrated and seeded {args.accounts:,} accounts in {time.perf_counter() - t0:.1f} s"
    )
    accounts = [str(a) for a in seeded.account_ids]
    path = f"/v1/communities/{seeded.community_id}/transactions"

    server = Server(url, args.workers, tmp / "server-postgres.log")
    try:
        server.start()
        idle_rss, _, _ = _rss_line(server)
        print(f"workers after start-up: {idle_rss}")
        token = await login(server.base_url, _seed.COORDINATOR_EMAIL, _seed.COORDINATOR_PASSWORD)
        sessions0 = await pg_sessions(ours_db)
        ours = await drive(
            base_url=server.base_url,
            token=token,
            path=path,
            accounts=accounts,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            client=args.client,
            server_pids=server.worker_pids(),
            database=ours_db,
        )
        sessions1 = await pg_sessions(ours_db)
        print_load(f"single postings, {args.concurrency} connections:", ours, args.workers)
        rss, worst_rss, peak_rss = _rss_line(server)
        print(f"  worker RSS:       {rss}")
        print(
            f"  new PostgreSQL sessions during the run (warm-up included): {sessions1 - sessions0:,}"
        )
        if not args.skip_batch:
            await settle(ours_db)
            busy0 = _procs.machine_busy_seconds()
            with _procs.BackendCpu(ours_db) as backends:
                batch = await run_batches(
                    base_url=server.base_url,
                    token=token,
                    path=f"{path}/batch",
                    accounts=accounts,
                    size=args.batch_size,
                    duration=args.duration / 2,
                    min_batches=3,
                    server_pids=server.worker_pids(),
                )
            print(f"atomic batches of {args.batch_size:,} transfers, one after another:")
            print(
                f"  postings/s:       {batch.rate:,.0f}  ({batch.batches} batches, "
                f"p50 {percentile(batch.batch_ms, 50):.0f} ms per batch, "
                f"max {max(batch.batch_ms, default=0):.0f} ms)"
            )
            counted = batch.postings + args.batch_size  # the database figure has the warm-up
            print(
                f"  CPU per posting:  server {batch.server_cpu / max(1, batch.postings) * 1e6:,.0f}"
                f" us, database {backends.seconds / counted * 1e6:,.0f} us"
            )
            print(
                machine_line(
                    busy0, {"server": batch.server_cpu, "database backends": backends.seconds}
                )
            )
            if batch.failures:
                print(f"  failures:         {dict(batch.failures)}")
            rss, worst_after, peak_rss = _rss_line(server)
            print(f"  worker RSS after batches: {rss}")
            worst_rss = max(worst_rss, worst_after)
    except BaseException:
        print(f"server log tail:\n{server.log_tail()}")
        raise
    finally:
        server.stop()
    check = await _seed.ledger_check(url)
    print(
        f"books after the run: {check.transactions:,} transactions, {check.entries:,} entries, "
        f"{check.idempotency_records:,} idempotency records, balances sum to {check.balance_sum}"
    )
    print()

    ref_tps: float | None = None
    ref_wide_p99: float | None = None
    ref_cpu_us: float | None = None
    ref_batch: _reference.BatchReference | None = None
    if args.skip_reference:
        print("== reference skipped (--skip-reference)\n")
    elif _procs.pgbench_path() is None:
        print(
            "== reference SKIPPED: pgbench is not installed "
            "(Debian: apt-get install postgresql-client-15 or postgresql-contrib)\n"
        )
    else:
        print(f"== PostgreSQL reference: one PL/pgSQL function per transfer, database {ref_db}")
        cleanup.append(ref_db)
        await _seed.create_pg_database(ref_db)
        ref_url = _seed.pg_url(ref_db)
        await asyncio.to_thread(_seed.migrate, ref_url)
        ref_seeded = await _seed.seed(ref_url, args.accounts)
        await _reference.install(ref_url, ref_seeded.account_ids)

        async def pgbench(clients: int, duration: float) -> _reference.PgbenchResult:
            return await asyncio.to_thread(
                _reference.run_pgbench,
                database=ref_db,
                user_id=ref_seeded.coordinator_user_id,
                accounts=args.accounts,
                clients=clients,
                duration=duration,
            )

        # Unmeasured first, as the service gets its warm-up: the first seconds on a freshly
        # loaded database cost about twice the CPU per transfer (hint bits, autovacuum and
        # autoanalyze of the new tables, cold caches).
        await pgbench(args.pgbench_clients, args.warmup)
        pgb = await pgbench(args.pgbench_clients, args.duration)
        ref_tps = pgb.tps
        if pgb.transactions and pgb.database_cpu:
            ref_cpu_us = pgb.database_cpu / pgb.transactions * 1e6
        wall = max(1.0, round(args.duration))
        print(f"pgbench, {args.pgbench_clients} clients, -M prepared, {wall:g} s:")
        print(
            f"  transfers/s:      {pgb.tps:,.0f}  ({pgb.transactions:,} transactions, {pgb.failed} failed)"
        )
        print(f"  latency ms:       p50 {pgb.p(50):.2f}  p90 {pgb.p(90):.2f}  p99 {pgb.p(99):.2f}")
        others = pgb.machine_busy - pgb.pgbench_cpu - pgb.database_cpu
        print(
            f"  CPU, cores busy:  machine {pgb.machine_busy / wall:.2f} = database backends "
            f"{pgb.database_cpu / wall:.2f} + pgbench {pgb.pgbench_cpu / wall:.2f}"
            f" + others {others / wall:.2f}"
        )
        if pgb.transactions:
            print(
                f"  CPU per transfer: database {pgb.database_cpu / pgb.transactions * 1e6:,.0f} us"
                f", pgbench {pgb.pgbench_cpu / pgb.transactions * 1e6:,.0f} us"
            )
        if args.concurrency != args.pgbench_clients:
            # The latency goal is for 32 connections; a closed loop of 32 clients waits
            # 32 / throughput on average (Little's law), whatever serves it. The reference
            # driven the same way shows what the database alone allows at that concurrency.
            wide = await pgbench(args.concurrency, args.duration / 2)
            ref_wide_p99 = wide.p(99)
            print(f"pgbench, {args.concurrency} clients (the service's concurrency):")
            print(
                f"  transfers/s:      {wide.tps:,.0f}  ({wide.transactions:,} transactions, "
                f"{wide.failed} failed)"
            )
            print(
                f"  latency ms:       p50 {wide.p(50):.2f}  p90 {wide.p(90):.2f}  p99 {wide.p(99):.2f}"
            )
        if not args.skip_batch:
            await settle(ref_db)
            ref_busy0 = _procs.machine_busy_seconds()
            with _procs.BackendCpu(ref_db) as ref_backends:
                ref_batch = await _reference.run_batch_reference(
                    url=ref_url,
                    user_id=ref_seeded.coordinator_user_id,
                    accounts=args.accounts,
                    size=args.batch_size,
                    duration=args.duration / 2,
                    min_batches=3,
                )
            print(f"{args.batch_size:,} calls in one transaction (bench_transfer_many):")
            print(
                f"  postings/s:       {ref_batch.rate:,.0f}  ({ref_batch.batches} batches, "
                f"p50 {percentile(ref_batch.batch_ms, 50):.0f} ms per batch)"
            )
            counted = ref_batch.postings + args.batch_size
            print(f"  CPU per posting:  database {ref_backends.seconds / counted * 1e6:,.0f} us")
            print(machine_line(ref_busy0, {"database backends": ref_backends.seconds}))
        print()

    if ours is not None:
        ratio = f"{ours.rate / ref_tps:.2f}x" if ref_tps else "n/a"
        summary.add(
            f"PG single postings/s ({args.concurrency} conns, {args.workers} workers)",
            f"{ours.rate:,.0f}",
            f"{ref_tps:,.0f} (pgbench, {args.pgbench_clients} clients)" if ref_tps else "skipped",
            f"ratio >= {GOAL_RATIO:.2f}x: {ratio}",
        )
        summary.add(
            "PG single p99 latency",
            f"{ours.percentile(99):.1f} ms (p50 {ours.percentile(50):.1f})",
            f"{ref_wide_p99:.1f} ms (pgbench, {args.concurrency} clients)" if ref_wide_p99 else "",
            f"<= {GOAL_P99_MS:.0f} ms",
        )
        summary.add(
            "PG worker RSS, max over workers",
            f"{worst_rss:.0f} MiB (VmHWM peak {peak_rss:.0f})",
            "",
            f"<= {GOAL_RSS_MIB:.0f} MiB",
        )
        if ref_cpu_us:
            summary.add(
                "PG CPU per posting (server + database)",
                f"{ours.cpu_per_posting_us:,.0f} us",
                f"{ref_cpu_us:,.0f} us (database)",
                f"same-CPU ratio {ref_cpu_us / ours.cpu_per_posting_us:.2f}x (derived)",
            )
        errors = ours.requests - ours.ok
        summary.add("PG single errors", f"{errors:,} of {ours.requests:,}", "", "")
    if batch is not None:
        ratio = f"{batch.rate / ref_batch.rate:.2f}x" if ref_batch and ref_batch.rate else "n/a"
        summary.add(
            f"PG atomic batch of {args.batch_size:,}, postings/s",
            f"{batch.rate:,.0f}",
            f"{ref_batch.rate:,.0f} (loop in one tx)" if ref_batch else "skipped",
            f"ratio >= {GOAL_BATCH_RATIO:.1f}x: {ratio}",
        )


async def bench_sqlite(args: argparse.Namespace, tmp: Path, summary: Summary) -> None:
    print("== SQLite: the service (1 worker)")
    url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    await asyncio.to_thread(_seed.migrate, url)
    seeded = await _seed.seed(url, args.accounts)
    server = Server(url, 1, tmp / "server-sqlite.log")
    try:
        server.start()
        token = await login(server.base_url, _seed.COORDINATOR_EMAIL, _seed.COORDINATOR_PASSWORD)
        result = await drive(
            base_url=server.base_url,
            token=token,
            path=f"/v1/communities/{seeded.community_id}/transactions",
            accounts=[str(a) for a in seeded.account_ids],
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            client=args.client,
            server_pids=server.worker_pids(),
        )
        print_load(f"single postings, {args.concurrency} connections:", result, 1)
        rss, worst, _ = _rss_line(server)
        print(f"  worker RSS:       {rss}")
    except BaseException:
        print(f"server log tail:\n{server.log_tail()}")
        raise
    finally:
        server.stop()
    check = await _seed.ledger_check(url)
    print(
        f"books after the run: {check.transactions:,} transactions, "
        f"balances sum to {check.balance_sum}"
    )
    print()
    summary.add(
        "SQLite single postings/s (1 worker)",
        f"{result.rate:,.0f} (p99 {result.percentile(99):.0f} ms, RSS {worst:.0f} MiB)",
        "",
        f">= {GOAL_SQLITE_RATE:,.0f}/s",
    )


async def main_async(args: argparse.Namespace) -> int:
    await print_machine(args)
    summary = Summary()
    cleanup: list[str] = []
    with tempfile.TemporaryDirectory(prefix="timebank-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            if args.skip_postgres:
                print("== PostgreSQL skipped (--skip-postgres)\n")
            else:
                await bench_postgres(args, tmp, summary, cleanup)
            if args.skip_sqlite:
                print("== SQLite skipped (--skip-sqlite)\n")
            else:
                await bench_sqlite(args, tmp, summary)
        finally:
            for database in cleanup:
                with contextlib.suppress(Exception):
                    await _seed.drop_pg_database(database)
            if cleanup:
                print(f"dropped databases: {', '.join(cleanup)}")
    print()
    print("== summary")
    summary.print()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        print("interrupted; servers stopped and databases dropped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

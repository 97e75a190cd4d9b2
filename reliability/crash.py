"""Crash: the soak's load while the server (and, in the long form, PostgreSQL) is killed.

    .venv/bin/python -m reliability.crash --backend postgresql --duration 90 --pg-restarts 1
    .venv/bin/python -m reliability.crash --backend sqlite --duration 25

At random moments (every ``--kill-every`` seconds) one of these faults is injected:

- ``kill -9`` of one uvicorn worker (PostgreSQL, 2 workers): the supervisor replaces it;
- ``kill -9`` of the whole server (its process group), then ``timebank serve`` again on the
  same port (the only fault on SQLite, which runs one worker on a file);
- with ``--pg-restarts N`` (PostgreSQL only; never in CI: the cluster is shared), N restarts of
  the cluster with ``pg_ctlcluster --skip-systemctl-redirect 15 main restart``.

Clients retry every unanswered write (connection error, timeout, 5xx,
``idempotency_in_progress``) with the same Idempotency-Key and body until it is answered.
Afterwards every acknowledged posting must be in the ledger exactly once (lost: 0), no
transaction half-written, every posted exchange with its one transaction, every invariant
holding, and ``timebank reconcile --seal`` clean. Exit status 0 only if all of that holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import httpx

from bench._server import Server
from reliability._run import FaultInjector, header, parse_mix, run
from reliability._world import Database

PG_RESTART = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"]


def restart_server(server: Server, directory_log: str) -> float:
    """kill -9 the whole server (its process group), then start it again on the same port."""
    t0 = time.monotonic()
    process = server.process
    if process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    server.stop()  # closes the log; the group is gone already
    server.log_path = server.log_path.with_name(directory_log)
    server.start(timeout=90)
    return time.monotonic() - t0


def _live_workers(server: Server) -> list[int]:
    alive: list[int] = []
    for pid in server.worker_pids():
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def replace_worker(server: Server, rng: random.Random) -> tuple[int, float, bool]:
    """kill -9 one worker; wait for the supervisor to start another (else restart all)."""
    t0 = time.monotonic()
    workers = _live_workers(server)
    victim = rng.choice(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = t0 + 30
    while time.monotonic() < deadline:
        live = [p for p in _live_workers(server) if p != victim]
        if len(live) >= server.workers:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200:
                    return victim, time.monotonic() - t0, True
        time.sleep(0.1)
    return victim, time.monotonic() - t0, False


def restart_postgres() -> float:
    t0 = time.monotonic()
    subprocess.run(PG_RESTART, check=True, timeout=120, capture_output=True)
    return time.monotonic() - t0


def make_injector(
    *, rng: random.Random, every: tuple[float, float], pg_restarts: int
) -> FaultInjector:
    async def inject(server: Server, database: Database, duration: float) -> list[str]:
        log: list[str] = []
        start = time.monotonic()
        stop = start + duration
        pg_due = [start + duration * (i + 1) / (pg_restarts + 1) for i in range(pg_restarts)]
        restarts = 0
        while True:
            wait = rng.uniform(*every)
            if time.monotonic() + wait > stop - 2:
                return log
            await asyncio.sleep(wait)
            at = time.monotonic() - start
            if pg_due and time.monotonic() >= pg_due[0] and database.backend == "postgresql":
                pg_due.pop(0)
                took = await asyncio.to_thread(restart_postgres)
                log.append(f"{at:6.1f} s  PostgreSQL cluster restarted ({took:.1f} s)")
            elif server.workers > 1 and rng.random() < 0.5:
                victim, took, replaced = await asyncio.to_thread(replace_worker, server, rng)
                if replaced:
                    log.append(
                        f"{at:6.1f} s  kill -9 worker {victim}; replaced by the supervisor, "
                        f"ready in {took:.1f} s"
                    )
                else:
                    restarts += 1
                    took = await asyncio.to_thread(restart_server, server, f"server-{restarts}.log")
                    log.append(
                        f"{at:6.1f} s  kill -9 worker {victim}; not replaced, whole server "
                        f"restarted ({took:.1f} s)"
                    )
            else:
                restarts += 1
                took = await asyncio.to_thread(restart_server, server, f"server-{restarts}.log")
                log.append(
                    f"{at:6.1f} s  kill -9 whole server; restarted and ready in {took:.1f} s"
                )

    return inject


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reliability.crash", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--backend",
        choices=["postgresql", "sqlite", "both"],
        default="both",
        help="both: PostgreSQL first, then SQLite",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load, per backend")
    parser.add_argument(
        "--sqlite-duration", type=float, help="with --backend both (default: --duration)"
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--members", type=int, default=40)
    parser.add_argument("--kill-every", default="4:10", help="MIN:MAX seconds between faults")
    parser.add_argument(
        "--pg-restarts",
        type=int,
        default=0,
        help="PostgreSQL cluster restarts (the cluster is shared: at most 2, never in CI)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    parser.add_argument("--mix", help="only these operations (see reliability.soak --help)")
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args(argv)
    low, _, high = args.kill_every.partition(":")
    args.every = (float(low), float(high or low))
    if not 0 <= args.pg_restarts <= 2:
        parser.error("--pg-restarts: 0, 1 or 2 (other people use this PostgreSQL)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["postgresql", "sqlite"] if args.backend == "both" else [args.backend]
    results: list[tuple[str, int]] = []
    for backend in backends:
        workers = 2 if backend == "postgresql" else 1
        duration = args.duration
        if backend == "sqlite" and args.sqlite_duration is not None:
            duration = args.sqlite_duration
        pg_restarts = args.pg_restarts if backend == "postgresql" else 0
        header(
            f"crash ({backend})",
            f"{workers} worker(s), {args.clients} clients, {duration:g} s, a fault every "
            f"{args.every[0]:g}-{args.every[1]:g} s, {pg_restarts} PostgreSQL restart(s), "
            f"seed {args.seed}",
        )
        code = asyncio.run(
            run(
                label="crash",
                backend=backend,
                workers=workers,
                clients=args.clients,
                duration=duration,
                members=args.members,
                seed_value=args.seed,
                request_timeout=args.timeout,
                grace=90.0,
                keep_database=args.keep_database,
                injector=make_injector(
                    rng=random.Random(args.seed), every=args.every, pg_restarts=pg_restarts
                ),
                mix=parse_mix(args.mix),
            )
        )
        results.append((backend, code))
        print()
    for backend, code in results:
        print(f"crash on {backend}: {'PASS' if code == 0 else 'FAIL'}")
    return 0 if all(code == 0 for _, code in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""One run, start to finish: database, seed, server, sign-in, load (optionally with faults),
checks, clean-up. ``soak`` and ``crash`` are thin front ends over :func:`run`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import _procs
from bench._server import Server
from reliability import _checks
from reliability._workload import MIX, Recorder, run_clients
from reliability._world import Database, World, new_server, seed, sign_in, use_run_secret

FaultInjector = Callable[[Server, Database, float], Awaitable[list[str]]]


def header(title: str, settings: str) -> None:
    print(f"== {title}")
    print(
        f"machine: {len(os.sched_getaffinity(0))} cores, load average {_procs.load_average()}"
        " (shared with other work)"
    )
    print(f"settings: {settings}")


def parse_mix(raw: str | None) -> dict[str, int] | None:
    """``exchange_group`` or ``exchange_pair=3,transfer=1``: only these operations."""
    if not raw:
        return None
    mix: dict[str, int] = {}
    for part in raw.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in MIX:
            raise SystemExit(f"unknown operation {name!r}; choose from {', '.join(MIX)}")
        mix[name] = int(weight or MIX[name])
    return mix


def log_tails(directory: Path, lines: int = 8) -> str:
    parts: list[str] = []
    for path in sorted(directory.glob("server*.log")):
        text = path.read_text(errors="replace").splitlines()
        interesting = [line for line in text if "Traceback" in line or "ERROR" in line]
        if interesting or text:
            parts.append(f"--- {path.name} (last {lines} lines)")
            parts.extend(line[:300] for line in text[-lines:])
    return "\n".join(parts)


async def run(
    *,
    label: str,
    backend: str,
    workers: int,
    clients: int,
    duration: float,
    members: int,
    seed_value: int,
    request_timeout: float,
    grace: float,
    keep_database: bool,
    injector: FaultInjector | None = None,
    mix: dict[str, int] | None = None,
) -> int:
    database = Database(backend, label)
    server: Server | None = None
    verdict = _checks.Verdict()
    faults: list[str] = []
    started = time.monotonic()
    use_run_secret()
    try:
        phase = time.monotonic()
        await database.create()
        print(f"database created and migrated: {time.monotonic() - phase:.1f} s")
        world: World = await seed(database.url, backend, members)
        server = new_server(database.url, workers, database.directory / "server.log")
        await asyncio.to_thread(server.start)
        print(f"server: {server.base_url}, {workers} worker(s), {backend} ({database.name})")
        await sign_in(world, server.base_url)
        print(f"setup: {time.monotonic() - started:.1f} s ({members} members signed in)")
        recorder = Recorder()
        load = run_clients(
            world,
            server.base_url,
            clients=clients,
            duration=duration,
            seed=seed_value,
            request_timeout=request_timeout,
            grace=grace,
            recorder=recorder,
            mix=mix,
        )
        if injector is None:
            await load
        else:
            _, faults = await asyncio.gather(load, injector(server, database, duration))
        print()
        recorder.print()
        if faults:
            print(f"faults injected: {len(faults)}")
            for fault in faults:
                print(f"  {fault}")
        print()
        _checks.check_clients(recorder, verdict, faults=injector is not None)
        if server.process is None or server.process.poll() is not None:
            await asyncio.to_thread(server.start)
        await _checks.check_replays(world, server.base_url, recorder, verdict)
        await asyncio.to_thread(server.stop)
        await _checks.check_books(world, recorder, verdict)
        await _checks.check_reconciliation(world, verdict)
        _checks.print_verdict(recorder, verdict)
        if injector is not None:
            print(
                f"faults injected {len(faults)} and survived; write retries {recorder.retries:,}; "
                f"postings acknowledged {verdict.acked:,}, in the ledger "
                f"{sum(verdict.ledger_by_kind.values()):,}, lost {verdict.lost}"
            )
        if recorder.server_errors or not verdict.ok:
            print(log_tails(database.directory))
        print(f"total: {time.monotonic() - started:.1f} s")
        return 0 if verdict.ok else 1
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
        if keep_database:
            print(f"kept the database: {database.url}")
        else:
            await database.drop()

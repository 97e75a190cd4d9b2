"""Soak: the real server under a realistic mixed load, then the books are checked.

    .venv/bin/python -m reliability.soak --duration 60 --clients 32
    .venv/bin/python -m reliability.soak --backend sqlite --workers 1

Starts ``timebank serve`` (2 workers) on a fresh PostgreSQL database, seeds one community
with a coordinator and members who sign in, and runs concurrent clients for a bounded time:
proposals and confirmations (1:1 and group, equal split), coordinator records, donations,
grants, transfers with reversals, disputes resolved by reversal, statements and network
reads, with hot spots and opposite-direction pairs. Then every DESIGN.md invariant is checked
in the database, ``timebank reconcile --seal`` must exit 0, no client may have seen a 5xx,
and the postings acknowledged to clients must equal the ledger's transactions, by kind.
Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from reliability._run import header, parse_mix, run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reliability.soak", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--workers", type=int, help="uvicorn workers (default 2; 1 on SQLite)")
    parser.add_argument("--members", type=int, default=40, help="members with logins")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the clients")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    parser.add_argument(
        "--mix", help="only these operations, e.g. exchange_group or transfer=2,grant=1"
    )
    parser.add_argument("--keep-database", action="store_true", help="do not drop it (debug)")
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = 1 if args.backend == "sqlite" else 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    header(
        "soak",
        f"{args.backend}, {args.workers} worker(s), {args.clients} clients, "
        f"{args.duration:g} s, {args.members} members, seed {args.seed}",
    )
    return asyncio.run(
        run(
            label="soak",
            backend=args.backend,
            workers=args.workers,
            clients=args.clients,
            duration=args.duration,
            members=args.members,
            seed_value=args.seed,
            request_timeout=args.timeout,
            grace=60.0,
            keep_database=args.keep_database,
            mix=parse_mix(args.mix),
        )
    )


if __name__ == "__main__":
    sys.exit(main())

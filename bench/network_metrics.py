"""Support-network speed on a generated community (prints numbers; asserts nothing).

    .venv/bin/python -m bench.network_metrics [--members 10000] [--exchanges 100000]
        [--database sqlite|postgresql|both] [--database-url URL] [--cold-runs 5]

Builds a fresh database with the migrations (SQLite: a file here; PostgreSQL: a scratch
database ``timebank_bench_network_<pid>`` on 127.0.0.1, dropped at the end), writes a
community (80% of exchanges from 20% of members, 30% of members inactive, 7% organisations)
straight into the tables, then measures through the ASGI app: full metrics cold (the first
request, then the median of ``--cold-runs`` rebuilds with the cache emptied) and cached,
member connections (p50/p99 of the 50 busiest members, 4 rounds), a GraphML export (time
through the app, and the server side's peak extra memory while generating it), and the same
metrics in NetworkX on the same machine in the same run. The load average is printed
before and after each database so that a noisy run shows itself.

PostgreSQL is ANALYZEd after the bulk load: a live database has statistics (autovacuum keeps
them), a table filled a second ago does not, and without them its planner picks nested loops
over 100,000 rows. SQLite is left as the service leaves it (no ANALYZE).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import networkx as nx
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text

from app.cli import migrate
from app.main import create_app
from app.network import exports, service
from app.network.cache import cache_from_state
from app.network.graph import GraphFilter, Window
from app.network.schemas import GraphFormat
from bench import _seed
from tests.conftest import make_settings
from tests.factories import Api
from tests.network.community import (
    GenCommunity,
    generate,
    insert_community,
    reference_graph,
    reference_metrics,
)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def _server_side_export_peak(app: Any, community_id: uuid.UUID) -> tuple[int, float]:
    """Bytes of GraphML and the peak extra memory while the server generates them from the
    cached snapshot (the ASGI test client keeps the whole body, so its memory is not the
    server's)."""
    cache = cache_from_state(app.state)
    async with app.state.sessionmaker() as session:
        snap = await service.snapshot(session, cache, community_id, Window())
    view = snap.graph.view(GraphFilter())
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    size = 0
    for chunk in exports.export(view, GraphFormat.graphml):
        size += len(chunk)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return size, peak / 1e6


async def run(members: int, exchanges: int, url: str, cold_runs: int) -> dict[str, float]:
    app = create_app(make_settings(url))
    figures: dict[str, float] = {}
    async with app.router.lifespan_context(app):
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://bench") as client:
            api = Api(client, app)
            community, admin = await api.community()
            community_id = uuid.UUID(community["id"])
            t = time.perf_counter()
            generated = generate(community_id, members=members, exchanges=exchanges, seed=42)
            generate_s = time.perf_counter() - t
            t = time.perf_counter()
            await insert_community(app.state.sessionmaker, generated)
            insert_s = time.perf_counter() - t
            if url.startswith("postgresql"):
                async with app.state.sessionmaker() as session:
                    await session.execute(text("ANALYZE"))
                    await session.commit()
            print(f"generated in {generate_s:.1f} s, inserted in {insert_s:.1f} s")
            print(f"load average {_load()}")
            metrics_url = f"/v1/communities/{community_id}/network/metrics"

            t = time.perf_counter()
            cold = await client.get(metrics_url, headers=admin.headers)
            first_cold_s = time.perf_counter() - t
            body: dict[str, Any] = cold.json()
            m = body["metrics"]
            print(
                f"graph: {m['members']} members, {m['edges']} ties; betweenness "
                f"{m['betweenness']['method']} ({m['betweenness']['pivots']} pivots, "
                f"max_error {m['betweenness']['max_error']:.3f} at "
                f"{m['betweenness']['confidence']})"
            )
            rebuilds = []
            cache = cache_from_state(app.state)
            for _ in range(cold_runs):
                cache.clear()
                t = time.perf_counter()
                await client.get(metrics_url, headers=admin.headers)
                rebuilds.append(time.perf_counter() - t)
            cold_s = statistics.median([first_cold_s, *rebuilds])
            print(f"metrics cold, first     {_ms(first_cold_s)}   (goal <= 2000 ms)")
            print(
                f"metrics cold, median    {_ms(cold_s)}   (first and {cold_runs} rebuilds; "
                f"min {_ms(min([first_cold_s, *rebuilds])).strip()})"
            )
            cached = []
            for _ in range(20):
                t = time.perf_counter()
                await client.get(metrics_url, headers=admin.headers)
                cached.append(time.perf_counter() - t)
            print(f"metrics cached (median) {_ms(statistics.median(cached))}   (goal <= 50 ms)")

            busiest = _busiest(generated)
            timings = []
            for _ in range(4):
                for member in busiest:
                    t = time.perf_counter()
                    await client.get(f"/v1/members/{member}/connections", headers=admin.headers)
                    timings.append(time.perf_counter() - t)
            timings.sort()
            p99 = timings[max(0, int(len(timings) * 0.99) - 1)]
            print(
                f"connections p50        {_ms(statistics.median(timings))}\n"
                f"connections p99        {_ms(p99)}   (goal <= 20 ms; busiest members)"
            )

            size = 0
            t = time.perf_counter()
            async with client.stream(
                "GET",
                f"/v1/communities/{community_id}/network",
                params={"format": "graphml"},
                headers=admin.headers,
            ) as response:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
            export_s = time.perf_counter() - t
            generated_size, peak_mb = await _server_side_export_peak(app, community_id)
            print(
                f"graphml export         {_ms(export_s)}   {size / 1e6:.1f} MB through the app; "
                f"server side peak extra memory {peak_mb:.1f} MB while generating "
                f"{generated_size / 1e6:.1f} MB in {exports.CHUNK_BYTES // 1024} KB chunks"
            )
            print(f"load average {_load()}")

    t = time.perf_counter()
    graph = reference_graph(generated)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    reference_metrics(graph)
    pivots = m["betweenness"]["pivots"]
    if m["betweenness"]["method"] == "exact":
        nx.betweenness_centrality(graph)
    else:
        nx.betweenness_centrality(graph, k=pivots, seed=1)
    nx_s = time.perf_counter() - t
    print(
        f"networkx same metrics  {_ms(nx_s)}   (+{build_s:.1f} s to build the graph; "
        f"betweenness with the same {pivots} pivots)"
    )
    print(
        f"ratio networkx / ours (cold, median) {nx_s / cold_s:.1f}x; "
        f"(cold, first) {nx_s / first_cold_s:.1f}x   (goal >= 10x)"
    )
    print(f"load average {_load()}")
    figures.update(cold=cold_s, networkx=nx_s)
    return figures


def _busiest(generated: GenCommunity) -> list[uuid.UUID]:
    """The 50 members with the most counted exchanges (the slowest connections to answer)."""
    involvement: dict[uuid.UUID, int] = {}
    for exchange in generated.exchanges:
        if exchange.counted:
            for member_id, _ in (*exchange.providers, *exchange.receivers):
                involvement[member_id] = involvement.get(member_id, 0) + 1
    return sorted(involvement, key=lambda member_id: -involvement[member_id])[:50]


def _bench_sqlite(args: argparse.Namespace) -> None:
    path = Path("bench-network.db")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite+aiosqlite:///{path}"
    try:
        migrate(url)
        print(f"== SQLite {url}")
        asyncio.run(run(args.members, args.exchanges, url, args.cold_runs))
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def _bench_postgresql(args: argparse.Namespace) -> None:
    name = f"timebank_bench_network_{os.getpid()}"
    asyncio.run(_seed.create_pg_database(name))
    try:
        url = _seed.pg_url(name)
        migrate(url)
        print(f"== PostgreSQL {asyncio.run(_seed.server_version()).split(' on ')[0]}: {name}")
        asyncio.run(run(args.members, args.exchanges, url, args.cold_runs))
    finally:
        asyncio.run(_seed.drop_pg_database(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--exchanges", type=int, default=100_000)
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--database-url", default=None, help="an existing, empty database")
    parser.add_argument("--cold-runs", type=int, default=5, help="rebuilds after the first")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()} {platform.processor()} cpus={os.cpu_count()} "
        f"python {platform.python_version()}; load average {_load()}"
    )
    if args.database_url is not None:
        migrate(args.database_url)
        asyncio.run(run(args.members, args.exchanges, args.database_url, args.cold_runs))
        return
    if args.database in ("sqlite", "both"):
        _bench_sqlite(args)
    if args.database in ("postgresql", "both"):
        _bench_postgresql(args)


if __name__ == "__main__":
    main()
